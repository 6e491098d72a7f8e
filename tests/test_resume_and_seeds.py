"""Resume after a kill at the awkward moments, several seeds in one process.

Each test trains the tiny synthetic run of tests/tiny_run.py in process and compares it
with the uninterrupted runs every test file shares (``tiny_run``, ``tiny_two_seeds``).
"""

import json
import os
import signal

import jax
import numpy as np
import pytest

from limijax import train
from limijax import evaluation
from limijax import seed_run
from limijax import run_log
from limijax import workdir as workdir_lib
from tiny_run import TWO_SEEDS, kill_when, main_args, synthetic_config


# --------------------------------------------------------------------------- resume
class _Killed(BaseException):
  """Stands for SIGKILL: nothing after the raise runs, files stay as they are."""


def _kill_at_latest_save(monkeypatch, kill):
  """From now on train's save of a latest checkpoint raises _Killed instead of saving when
  ``kill(workdir, step, best_manager)``; returns the real ``workdir_lib.managers``."""
  real_managers = workdir_lib.managers  # pylint: disable=protected-access

  def managers(workdir, **kwargs):
    latest, best = real_managers(workdir, **kwargs)
    real_save = latest.save

    def save(step, *args, **kw):
      if kill(workdir, step, best):
        raise _Killed()
      return real_save(step, *args, **kw)

    latest.save = save
    return latest, best

  monkeypatch.setattr(seed_run, 'managers', managers)
  return real_managers


@pytest.fixture
def reference_run(tiny_run):
  return tiny_run


def _assert_same_run(workdir, reference):
  ref_dir, ref_results = reference
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  for key in ('best_epoch', 'val', 'test', 'steps', 'baselines'):
    assert results[key] == ref_results[key], key
  a, b = workdir_lib.load_run(workdir), workdir_lib.load_run(ref_dir)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)

  def records(w):
    with open(os.path.join(w, 'metrics.jsonl')) as f:
      return [{k: v for k, v in json.loads(l).items() if k not in run_log.TIMING_KEYS}
              for l in f]

  assert records(workdir) == records(ref_dir)


def test_resume_when_killed_between_the_best_and_latest_saves_then_during_the_final_test(
    data_dir, tmp_path, monkeypatch, reference_run):
  workdir = str(tmp_path / 'w')
  # 1. Killed in epoch 1 after the best checkpoint was written, before the latest one.
  real_managers = _kill_at_latest_save(  # best of this epoch written, latest not yet
      monkeypatch, lambda w, step, best: step in best.all_steps())
  with pytest.raises(_Killed):
    train.train_and_evaluate(synthetic_config(data_dir), workdir, progress=False)
  assert os.listdir(os.path.join(workdir, 'checkpoints', 'best')) == ['8']
  assert not [n for n in os.listdir(os.path.join(workdir, 'checkpoints', 'latest'))
              if n.isdigit()]
  monkeypatch.setattr(seed_run, 'managers', real_managers)

  # 2. Resumed (from scratch, the best checkpoint of epoch 1 kept), it trains every epoch
  # and is killed while testing the best checkpoint.
  real_evaluate = evaluation.evaluate_source

  def evaluate(*args, desc='eval', **kwargs):
    if desc == 'test':
      raise _Killed()
    return real_evaluate(*args, desc=desc, **kwargs)

  monkeypatch.setattr(seed_run, 'evaluate_source', evaluate)
  with pytest.raises(_Killed):
    train.train_and_evaluate(synthetic_config(data_dir), workdir, progress=False)
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  assert workdir_lib.managers(workdir)[0].all_steps() == [24]  # pylint: disable=protected-access
  monkeypatch.setattr(seed_run, 'evaluate_source', real_evaluate)

  # 3. Resumed again, it only tests: the run is the uninterrupted one.
  train.train_and_evaluate(synthetic_config(data_dir), workdir, progress=False)
  _assert_same_run(workdir, reference_run)


# --------------------------------------------------------------------------- num_seeds
@pytest.fixture
def two_seeds(tiny_two_seeds):
  """seeds 0 and 1 in one process (seed 1 is reference_run's seed)."""
  return tiny_two_seeds


def test_num_seeds_gives_each_seed_its_single_run(data_dir, tmp_path, two_seeds, reference_run):
  workdir, results = two_seeds
  assert [r['seed'] for r in results['runs']] == [0, 1] and not results['diverged']
  assert sorted(os.listdir(workdir)) == ['config.json', 'seed_0', 'seed_1']
  single0 = train.train_and_evaluate(synthetic_config(data_dir, seed=0), str(tmp_path / 's0'),
                                     progress=False)['runs'][0]
  # Each seed takes the step, data stream and choices of the same seed alone: the same
  # results, metrics lines and weights, bit for bit.
  for run, single in zip(results['runs'], (single0, reference_run[1])):
    assert run['workdir'] == os.path.join(workdir, f'seed_{run["seed"]}')
    for key in ('best_epoch', 'val', 'test', 'best_test_epoch', 'steps', 'baselines'):
      assert run[key] == single[key], key
    assert _records(run['workdir']) == _records(single['workdir'])
    got, want = (workdir_lib.load_run(r['workdir']).params for r in (run, single))
    jax.tree.map(np.testing.assert_array_equal, got, want)
    # Each seed's folder is a run of its own: its config is the single run's.
    with open(os.path.join(run['workdir'], 'config.json')) as f:
      stored = json.load(f)
    assert stored['seed'] == run['seed'] and stored['num_seeds'] == 1
    assert evaluation.evaluate_workdir(run['workdir'], 'test') == run['test']
  a, b = (workdir_lib.load_run(r['workdir']).params for r in results['runs'])
  assert not np.array_equal(a['head']['logit']['kernel'], b['head']['logit']['kernel'])
  assert results['runs'][0]['baselines'] == results['runs'][1]['baselines']  # top-hat once


def _records(workdir):
  """metrics.jsonl without the keys that measure the machine's speed."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(l).items() if k not in run_log.TIMING_KEYS} for l in f]


def test_vectorised_seeds_train_nearly_as_alone(data_dir, tmp_path, two_seeds):
  """vectorise_seeds: one vmap-ed step for both seeds (1x1 convolutions as matrix
  products) rounds differently: mIoU and nIoU equal to 1e-2, Pd to one target, false
  alarms to two pixels, the same best epochs."""
  results = train.train_and_evaluate(
      synthetic_config(data_dir, vectorise_seeds=True, **TWO_SEEDS), str(tmp_path / 'v'),
      progress=False)
  for run, alone in zip(results['runs'], two_seeds[1]['runs']):
    assert run['best_epoch'] == alone['best_epoch']
    for split in ('val', 'test'):
      for key in ('miou', 'niou'):
        assert run[split][key] == pytest.approx(alone[split][key], abs=1e-2), (split, key)
      matched = [m[split]['num_matched_targets'] for m in (run, alone)]
      assert abs(matched[0] - matched[1]) <= 1, (split, matched)
      pixels = [m[split]['num_false_alarm_pixels'] for m in (run, alone)]
      assert abs(pixels[0] - pixels[1]) <= 2, (split, pixels)
  params = [workdir_lib.load_run(r['workdir']).params for r in results['runs']]
  assert not np.array_equal(params[0]['head']['logit']['kernel'],
                            params[1]['head']['logit']['kernel'])


def test_num_seeds_a_diverged_seed_stops_alone(data_dir, tmp_path, monkeypatch, two_seeds):
  real_make_train_step = train.make_train_step

  def make_train_step(*args, **kwargs):
    step_fn = real_make_train_step(*args, **kwargs)
    calls = {}

    def poisoned(state, batch):  # called for seed 0, then seed 1, at every step
      new, out = step_fn(state, batch)
      step = int(new['step'])
      calls[step] = calls.get(step, 0) + 1
      if step == 10 and calls[step] == 2:  # seed 1's weights blow up in epoch 2
        new['params'] = jax.tree.map(lambda p: p * np.float32('nan'), new['params'])
      return new, out

    return poisoned

  monkeypatch.setattr(train, 'make_train_step', make_train_step)
  workdir = str(tmp_path / 'w')
  results = train.train_and_evaluate(synthetic_config(data_dir, **TWO_SEEDS), workdir,
                                     progress=False)
  assert [r['seed'] for r in results['runs']] == [0]
  assert 'step 11' in results['diverged'][1] and 'step 8' in results['diverged'][1]
  assert not os.path.exists(os.path.join(workdir, 'seed_1', 'results.json'))
  assert workdir_lib.managers(os.path.join(workdir, 'seed_1'))[0].all_steps() == [8]
  # Seed 0 went on as if alone.
  assert results['runs'][0]['test'] == two_seeds[1]['runs'][0]['test']


def test_num_seeds_killed_by_sigkill_then_between_two_seeds_saves_resumes_identically(
    data_dir, tmp_path, monkeypatch, two_seeds):
  """The command itself, killed by SIGKILL inside epoch 2 and started again; that run is
  killed between the two seeds' saves of epoch 2 and started again: the run ends as the
  uninterrupted one."""
  workdir = str(tmp_path / 'w')
  args = main_args(workdir, data_dir, **TWO_SEEDS)
  # The same config as two_seeds, given as flags.
  with open(os.path.join(two_seeds[0], 'config.json')) as f:
    assert workdir_lib.config_dict(synthetic_config(data_dir, **TWO_SEEDS)) == json.load(f)
  log_path = os.path.join(workdir, 'seed_1', 'metrics.jsonl')

  def seed_1_logged_step_10():  # step 10 is in epoch 2 (8 steps an epoch)
    try:
      with open(log_path) as f:
        return any(json.loads(l).get('step') == 10 for l in f if l.endswith('\n'))
    except (OSError, ValueError):
      return False

  # 1. SIGKILL mid-epoch 2: epoch 1's checkpoint, no results.
  code = kill_when(args, seed_1_logged_step_10, tmp_path / 'killed.log')
  assert code == -signal.SIGKILL
  for seed in (0, 1):
    seed_dir = os.path.join(workdir, f'seed_{seed}')
    assert workdir_lib.managers(seed_dir)[0].all_steps() == [8]
    assert not os.path.exists(os.path.join(seed_dir, 'results.json'))

  # 2. Resumed, and killed once seed 0 has saved epoch 2 and seed 1 has not.
  real_managers = _kill_at_latest_save(
      monkeypatch, lambda w, step, best: w.endswith('seed_1') and step == 16)
  with pytest.raises(_Killed):
    train.train_and_evaluate(synthetic_config(data_dir, **TWO_SEEDS), workdir, progress=False)
  assert real_managers(os.path.join(workdir, 'seed_0'))[0].all_steps() == [8, 16]
  assert real_managers(os.path.join(workdir, 'seed_1'))[0].all_steps() == [8]
  monkeypatch.setattr(seed_run, 'managers', real_managers)

  # 3. Resumed again, to the end.
  results = train.train_and_evaluate(synthetic_config(data_dir, **TWO_SEEDS), workdir,
                                     progress=False)
  ref_dir, ref = two_seeds
  assert [r['seed'] for r in results['runs']] == [0, 1]
  for expected in ref['runs']:
    seed_dir = os.path.join(workdir, f'seed_{expected["seed"]}')
    _assert_same_run(seed_dir, (expected['workdir'], expected))
