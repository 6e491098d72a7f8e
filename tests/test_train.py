"""limijax.train in process: the learning-rate schedule and the stop on a NaN loss.

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
def test_schedule_is_warmup_times_per_epoch_cosine():
  config = defaults.base_config()
  config.learning_rate, config.min_learning_rate = 5e-3, 5e-4
  config.warmup_steps, config.warmup_start_factor = 30, 0.05
  config.cosine_period_epochs = 10
  steps_per_epoch = 7
  schedule = train.make_schedule(config, steps_per_epoch)

  def expected(step):
    epoch = step // steps_per_epoch
    cosine = 5e-4 + (5e-3 - 5e-4) * (1 + math.cos(math.pi * epoch / 10)) / 2
    return cosine * (0.05 + 0.95 * min(step, 30) / 30)

  for step in (0, 1, 6, 7, 29, 30, 31, 69, 70, 139, 140, 141, 1000):
    assert float(schedule(step)) == pytest.approx(expected(step), rel=1e-5), step
  assert float(schedule(0)) == pytest.approx(5e-3 * 0.05)
  assert float(schedule(70)) == pytest.approx(5e-4)  # epoch 10: eta_min
  assert float(schedule(140)) == pytest.approx(5e-3)  # epoch 20: back up, like PyTorch


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
        new['variables']['params'] = jax.tree.map(lambda p: p * np.float32('nan'),
                                                  new['variables']['params'])
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
