"""limijax.train in process: the schedule, learning at all, the stop on a NaN loss, resume.

The CLI runs (workdir contents, kill and resume, refusals, evaluate, predict) are in
tests/test_cli_runs.py; the run here uses the same tiny config, so the compiled training
step comes from the shared persistent compilation cache.
"""

import json
import math
import os
import pathlib

import jax
import numpy as np
import pytest

from limijax import defaults
from limijax import train
from limijax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _synthetic_config(data_dir, **overrides):
  config = defaults.config_from_file(str(REPO / 'configs' / 'synthetic.py'))
  # Same values as tests/test_cli_runs.py's tiny run, so compiled programs are shared.
  values = {'seed': 1, 'data.root': '/unused/by/synthetic', 'data.split_seed': 1,
            'num_epochs': 3, 'batch_size': 4, 'eval_every_epochs': 1,
            'data.image_size': 32, 'data.num_images': 50, 'data.synthetic_size': 32,
            'data.its.enabled': True, 'data.data_dir': data_dir, **overrides}
  for key, value in values.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.lock()
  return config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  # The folder tests/test_cli_runs.py uses: the data are generated once per test process.
  path = tmp_path_factory.getbasetemp() / 'limijax-data'
  path.mkdir(exist_ok=True)
  return str(path)


# --------------------------------------------------------------------------- schedule
def _torch_rates(config, steps_per_epoch, epochs):
  """The rate of every step of the paper's recipe in PyTorch: LinearLR per iteration
  chained with CosineAnnealingLR per epoch on one optimiser."""
  torch = pytest.importorskip('torch')
  w = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.AdamW([w], lr=config.learning_rate)
  warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=config.warmup_start_factor,
                                           end_factor=1.0, total_iters=config.warmup_steps)
  cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
      opt, T_max=config.cosine_period_epochs, eta_min=config.min_learning_rate)
  rates = []
  for _ in range(epochs):
    for _ in range(steps_per_epoch):
      rates.append(opt.param_groups[0]['lr'])
      opt.step()
      warm.step()
    cosine.step()
  return np.array(rates)


@pytest.mark.parametrize('steps_per_epoch', [7, 40])  # warm-up over 5 epochs / inside one
def test_schedule_matches_torch_linear_then_cosine_step_by_step(steps_per_epoch):
  config = defaults.base_config()  # lr 5e-3, min 5e-4, 30 warm-up steps from 0.05, T 10
  config.num_epochs = 45
  expected = _torch_rates(config, steps_per_epoch, config.num_epochs)
  schedule = jax.jit(train.make_schedule(config, steps_per_epoch))
  got = np.array([float(schedule(t)) for t in range(len(expected))])
  np.testing.assert_allclose(got, expected, rtol=2e-7)
  # Landmarks worked out by hand: step 0 runs at 0.05 x 5e-3; after warm-up inside
  # epoch 0 the full 5e-3; epoch 10 at eta_min, epoch 20 back at 5e-3.
  assert got[0] == pytest.approx(2.5e-4, rel=1e-6)
  if steps_per_epoch == 40:
    assert got[35] == pytest.approx(5e-3, rel=1e-6)
    assert got[10 * 40] == pytest.approx(5e-4, rel=1e-6)
    assert got[20 * 40] == pytest.approx(5e-3, rel=1e-6)


# --------------------------------------------------------------------------- NaN stop
def test_nan_loss_stops_with_one_clear_error_and_keeps_the_checkpoint(
    data_dir, tmp_path, monkeypatch):
  poison_after = 10  # in epoch 2; the end of epoch 1 (step 8) was checkpointed
  real_make_train_step = train.make_train_step

  def make_train_step(*args, **kwargs):
    step_fn = real_make_train_step(*args, **kwargs)  # the real compiled step, unchanged

    def poisoned(state, batch):
      new, out = step_fn(state, batch)
      if int(new['step']) == poison_after:  # weights blown up: the next loss is NaN
        new['params'] = jax.tree.map(lambda p: p * np.float32('nan'), new['params'])
      return new, out

    return poisoned

  monkeypatch.setattr(train, 'make_train_step', make_train_step)
  workdir = str(tmp_path / 'w')
  config = _synthetic_config(data_dir)
  with pytest.raises(train.TrainingDiverged) as info:
    train.train_and_evaluate(config, workdir, progress=False)
  assert isinstance(info.value, UserError)  # the CLI prints it as one line, exit 2
  message = str(info.value)
  assert 'nan' in message.lower()
  assert f'step {poison_after + 1}' in message
  assert 'step 8' in message and workdir in message  # names the last good checkpoint
  assert '\n' not in message

  # The checkpoint of epoch 1 is still there, restorable and finite.
  latest, best = train._managers(workdir)  # pylint: disable=protected-access
  assert latest.all_steps() == [8] and best.all_steps() == [8]
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  state = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', 'latest', '8', 'state'))
  assert int(state['step']) == 8
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
  trained = train.load_run(workdir)
  assert trained.epoch == 1
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(trained.params))
  assert not os.path.exists(os.path.join(workdir, 'results.json'))

  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(l) for l in f if l.strip()]
  assert records[-1]['event'] == 'diverged' and records[-1]['step'] == poison_after + 1
  assert all(math.isfinite(r['loss']) for r in records if r['event'] == 'train')


# --------------------------------------------------------------------------- it learns
def test_a_few_dozen_steps_on_one_batch_halve_the_loss():
  # A sign-flipped, zero or mis-scaled update would leave the loss where it started.
  from limijax import model as model_lib  # pylint: disable=g-import-not-at-top
  config = defaults.base_config()
  config.num_epochs, config.warmup_steps = 1, 0
  model = model_lib.LimiNet()
  tx, schedule = train.make_optimizer(config, steps_per_epoch=40)
  step = train.make_train_step(model, tx, schedule, config.loss)
  rng = np.random.default_rng(0)
  image = rng.normal(0, 1, (4, 32, 32, 1)).astype(np.float32)
  mask = np.zeros((4, 32, 32, 1), np.float32)
  for i, (y, x) in enumerate(((5, 7), (20, 11), (14, 25), (26, 26))):
    image[i, y - 1:y + 2, x - 1:x + 2] += 4.0  # a bright 3x3 target
    mask[i, y - 1:y + 2, x - 1:x + 2] = 1.0
  batch = {'image': image, 'mask': mask}
  state = train.init_state(model, tx, train.seed_key(0))
  losses = []
  for _ in range(40):
    state, out = step(state, batch)
    losses.append(float(out['loss']))
  assert int(state['step']) == 40
  assert losses[-1] < 0.5 * losses[0], losses


# --------------------------------------------------------------------------- BatchNorm stem
def test_batchnorm_ablation_trains_its_statistics_and_load_run_restores_them(data_dir, tmp_path):
  from limijax import model as model_lib  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'bn')
  config = _synthetic_config(data_dir, **{'model.stem': 'dsconv_bn', 'num_epochs': 1})
  results = train.train_and_evaluate(config, workdir, progress=False)
  run = train.load_run(workdir)
  stats = run.model_state['batch_stats']['stem_dsconv_bn']['bn']
  fresh = model_lib.init(run.model, jax.random.PRNGKey(0))['batch_stats']['stem_dsconv_bn']['bn']
  # Initial running statistics are mean 0, var 1; training on images normalised per
  # dataset (not per batch) moves them.
  np.testing.assert_array_equal(fresh['mean'], 0)
  assert not np.allclose(stats['mean'], fresh['mean'])
  assert not np.allclose(stats['var'], fresh['var'])
  # Evaluation uses the restored statistics: the test metrics of the run are what
  # evaluate_workdir gives, and another set of statistics gives other logits.
  assert train.evaluate_workdir(workdir, 'test') == results['test']
  dataset_image = np.asarray(np.random.default_rng(1).normal(size=(1, 32, 32, 1)), np.float32)
  predict = train.make_predict(run.model)
  with_stats = predict(run.params, run.model_state, dataset_image)
  with_fresh = predict(run.params, {'batch_stats': {'stem_dsconv_bn': {'bn': fresh}}},
                       dataset_image)
  assert not np.allclose(with_stats, with_fresh)


# --------------------------------------------------------------------------- resume
class _Killed(BaseException):
  """Stands for SIGKILL: nothing after the raise runs, files stay as they are."""


@pytest.fixture(scope='module')
def reference_run(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('ref') / 'w')
  return workdir, train.train_and_evaluate(_synthetic_config(data_dir), workdir, progress=False)


def _assert_same_run(workdir, reference):
  ref_dir, ref_results = reference
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  for key in ('best_epoch', 'val', 'test', 'steps', 'baselines'):
    assert results[key] == ref_results[key], key
  a, b = train.load_run(workdir), train.load_run(ref_dir)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)

  def records(w):
    with open(os.path.join(w, 'metrics.jsonl')) as f:
      return [{k: v for k, v in json.loads(l).items() if k not in ('wall_time', 'steps_per_s')}
              for l in f]

  assert records(workdir) == records(ref_dir)


def test_resume_when_killed_between_the_best_and_the_latest_save(
    data_dir, tmp_path, monkeypatch, reference_run):
  real_managers = train._managers  # pylint: disable=protected-access

  def managers(workdir):
    latest, best = real_managers(workdir)
    real_save = latest.save

    def save(step, *args, **kwargs):
      if step in best.all_steps():  # best of this epoch written, latest not yet
        raise _Killed()
      return real_save(step, *args, **kwargs)

    latest.save = save
    return latest, best

  workdir = str(tmp_path / 'w')
  monkeypatch.setattr(train, '_managers', managers)
  with pytest.raises(_Killed):
    train.train_and_evaluate(_synthetic_config(data_dir), workdir, progress=False)
  assert os.listdir(os.path.join(workdir, 'checkpoints', 'best')) == ['8']
  assert not [n for n in os.listdir(os.path.join(workdir, 'checkpoints', 'latest'))
              if n.isdigit()]
  monkeypatch.setattr(train, '_managers', real_managers)
  train.train_and_evaluate(_synthetic_config(data_dir), workdir, progress=False)
  _assert_same_run(workdir, reference_run)


def test_resume_when_killed_during_the_final_test(data_dir, tmp_path, monkeypatch,
                                                  reference_run):
  real_evaluate = train.evaluate_source

  def evaluate(*args, desc='eval', **kwargs):
    if desc == 'test':
      raise _Killed()
    return real_evaluate(*args, desc=desc, **kwargs)

  workdir = str(tmp_path / 'w')
  monkeypatch.setattr(train, 'evaluate_source', evaluate)
  with pytest.raises(_Killed):
    train.train_and_evaluate(_synthetic_config(data_dir), workdir, progress=False)
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  monkeypatch.setattr(train, 'evaluate_source', real_evaluate)
  train.train_and_evaluate(_synthetic_config(data_dir), workdir, progress=False)
  _assert_same_run(workdir, reference_run)


# --------------------------------------------------------------------------- num_seeds
@pytest.fixture(scope='module')
def two_seeds(data_dir, tmp_path_factory):
  """seeds 1 and 2 in one process (seed 1 is reference_run's seed)."""
  workdir = str(tmp_path_factory.mktemp('two') / 'w')
  config = _synthetic_config(data_dir, num_seeds=2)
  return workdir, train.train_and_evaluate(config, workdir, progress=False)


def test_num_seeds_gives_each_seed_its_single_run(data_dir, tmp_path, two_seeds, reference_run):
  workdir, results = two_seeds
  assert [r['seed'] for r in results['runs']] == [1, 2] and not results['diverged']
  assert sorted(os.listdir(workdir)) == ['config.json', 'seed_1', 'seed_2']
  single2 = train.train_and_evaluate(_synthetic_config(data_dir, seed=2), str(tmp_path / 's2'),
                                     progress=False)
  # vmap batches the same arithmetic; metrics equal to 1e-3, the same best epochs.
  for run, single in zip(results['runs'], (reference_run[1], single2)):
    assert run['workdir'] == os.path.join(workdir, f'seed_{run["seed"]}')
    assert run['best_epoch'] == single['best_epoch']
    for split in ('val', 'test'):
      for key in ('miou', 'niou', 'pd', 'fa_e6'):
        assert run[split][key] == pytest.approx(single[split][key], abs=1e-3), (split, key)
    # Each seed's folder is a run of its own: its config is the single run's.
    with open(os.path.join(run['workdir'], 'config.json')) as f:
      stored = json.load(f)
    assert stored['seed'] == run['seed'] and stored['num_seeds'] == 1
    assert train.evaluate_workdir(run['workdir'], 'test') == run['test']
  a, b = (train.load_run(r['workdir']).params for r in results['runs'])
  assert not np.array_equal(a['head']['logit']['kernel'], b['head']['logit']['kernel'])
  assert results['runs'][0]['baselines'] == results['runs'][1]['baselines']  # top-hat once


def test_num_seeds_resume_when_killed_between_two_seeds_saves(data_dir, tmp_path, monkeypatch,
                                                              two_seeds):
  real_managers = train._managers  # pylint: disable=protected-access

  def managers(workdir, **kwargs):
    latest, best = real_managers(workdir, **kwargs)
    if workdir.endswith('seed_2'):
      real_save = latest.save

      def save(step, *args, **kw):
        if step == 16:  # seed 1 holds epoch 2, seed 2 only epoch 1
          raise _Killed()
        return real_save(step, *args, **kw)

      latest.save = save
    return latest, best

  workdir = str(tmp_path / 'w')
  monkeypatch.setattr(train, '_managers', managers)
  with pytest.raises(_Killed):
    train.train_and_evaluate(_synthetic_config(data_dir, num_seeds=2), workdir, progress=False)
  assert train._managers(os.path.join(workdir, 'seed_1'))[0].all_steps() == [8, 16]
  monkeypatch.setattr(train, '_managers', real_managers)
  results = train.train_and_evaluate(_synthetic_config(data_dir, num_seeds=2), workdir,
                                     progress=False)
  ref_dir, ref = two_seeds
  for run, expected in zip(results['runs'], ref['runs']):
    _assert_same_run(run['workdir'], (expected['workdir'], expected))


def test_num_seeds_a_diverged_seed_stops_alone(data_dir, tmp_path, monkeypatch, two_seeds):
  real_make_train_step = train.make_train_step

  def make_train_step(*args, **kwargs):
    step_fn = real_make_train_step(*args, **kwargs)

    def poisoned(state, batch):
      new, out = step_fn(state, batch)
      if int(new['step'][1]) == 10:  # seed 2's weights blow up in epoch 2
        new['params'] = jax.tree.map(lambda p: p.at[1].multiply(np.float32('nan')),
                                     new['params'])
      return new, out

    return poisoned

  monkeypatch.setattr(train, 'make_train_step', make_train_step)
  workdir = str(tmp_path / 'w')
  results = train.train_and_evaluate(_synthetic_config(data_dir, num_seeds=2), workdir,
                                     progress=False)
  assert [r['seed'] for r in results['runs']] == [1]
  assert 'step 11' in results['diverged'][2] and 'step 8' in results['diverged'][2]
  assert not os.path.exists(os.path.join(workdir, 'seed_2', 'results.json'))
  assert train._managers(os.path.join(workdir, 'seed_2'))[0].all_steps() == [8]
  # Seed 1 went on as if alone.
  assert results['runs'][0]['test'] == two_seeds[1]['runs'][0]['test']


# --------------------------------------------------------------------------- data parallel
def _two_device_run(data_dir, workdir, **overrides):
  """The tiny run in a fresh process that sees two CPU devices."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  values = {'seed': 1, 'data.root': '/unused/by/synthetic', 'data.split_seed': 1,
            'num_epochs': 3, 'batch_size': 4, 'eval_every_epochs': 1, 'data.image_size': 32,
            'data.num_images': 50, 'data.synthetic_size': 32, 'data.its.enabled': True,
            'data.data_dir': data_dir, **overrides}
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2')
  proc = subprocess.run(
      [sys.executable, '-m', 'limijax.main', f'--config={REPO / "configs" / "synthetic.py"}',
       f'--workdir={workdir}', '--progress=false',
       *(f'--config.{k}={v}' for k, v in values.items())],
      capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'data parallel over 2 devices' in proc.stderr
  return proc


@pytest.mark.parametrize('num_seeds', [1, 2])  # the batch split / the seeds split
def test_two_devices_train_what_one_device_trains(data_dir, tmp_path, reference_run, two_seeds,
                                                  num_seeds):
  workdir = tmp_path / 'w'
  _two_device_run(data_dir, str(workdir), num_seeds=num_seeds)
  if num_seeds == 1:
    pairs = [(workdir, reference_run[1])]
  else:
    pairs = [(workdir / f'seed_{r["seed"]}', r) for r in two_seeds[1]['runs']]
  for folder, expected in pairs:
    with open(folder / 'results.json') as f:
      got = json.load(f)
    # Sums over a batch split in two are added in another order: metrics within 1e-2.
    assert got['best_epoch'] == expected['best_epoch']
    for key in ('miou', 'niou', 'pd'):
      assert got['test'][key] == pytest.approx(expected['test'][key], abs=1e-2), key
