"""limijax.train in process: the schedule, learning at all, the stop on a NaN loss, the
BatchNorm ablation. Resume, several seeds and devices: tests/test_resume_and_seeds.py; the
CLI runs: tests/test_cli_runs.py. All use the tiny run of tests/tiny_run.py.
"""

import json
import logging
import math
import os
import time

import jax
import numpy as np
import pytest

from limijax import defaults
from limijax import train
from limijax import errors
from limijax.errors import UserError
from limijax import evaluation
from limijax import input_pipeline
from limijax import schedule as schedule_lib
from limijax import workdir as workdir_lib
from tiny_run import synthetic_config


# --------------------------------------------------------------------------- schedule
def _torch_rates(config, steps_per_epoch, epochs):
  """The rate of every step of the paper's recipe in PyTorch: LinearLR per iteration
  chained with the cosine of ``config.cosine`` per epoch on one optimiser."""
  torch = pytest.importorskip('torch')
  w = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.AdamW([w], lr=config.learning_rate)
  schedulers = torch.optim.lr_scheduler
  if config.cosine == 'restarts':  # created first: its own first step sets the full rate
    cosine = schedulers.CosineAnnealingWarmRestarts(
        opt, T_0=config.cosine_period_epochs, eta_min=config.min_learning_rate)
  warm = schedulers.LinearLR(opt, start_factor=config.warmup_start_factor,
                             end_factor=1.0, total_iters=config.warmup_steps)
  if config.cosine != 'restarts':
    t_max = config.num_epochs if config.cosine == 'single' else config.cosine_period_epochs
    cosine = schedulers.CosineAnnealingLR(opt, T_max=t_max, eta_min=config.min_learning_rate)
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
  schedule = jax.jit(schedule_lib.make_schedule(config, steps_per_epoch))
  got = np.array([float(schedule(t)) for t in range(len(expected))])
  np.testing.assert_allclose(got, expected, rtol=2e-7)
  # Landmarks worked out by hand: step 0 runs at 0.05 x 5e-3; after warm-up inside
  # epoch 0 the full 5e-3; epoch 10 at eta_min, epoch 20 back at 5e-3.
  assert got[0] == pytest.approx(2.5e-4, rel=1e-6)
  if steps_per_epoch == 40:
    assert got[35] == pytest.approx(5e-3, rel=1e-6)
    assert got[10 * 40] == pytest.approx(5e-4, rel=1e-6)
    assert got[20 * 40] == pytest.approx(5e-3, rel=1e-6)


@pytest.mark.parametrize('reading', ['restarts', 'single'])
def test_the_other_cosine_readings_match_torch_step_by_step(reading):
  config = defaults.base_config()
  config.num_epochs, config.cosine = 25, reading
  steps_per_epoch = 7  # warm-up (30 steps) outlasts four epochs
  expected = _torch_rates(config, steps_per_epoch, config.num_epochs)
  got = np.asarray(schedule_lib.lr_table(config, steps_per_epoch, len(expected)))
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  by_epoch = got[::steps_per_epoch]  # the first step of each epoch
  if reading == 'restarts':  # back at the full rate every 10 epochs, falling in between
    assert by_epoch[10] == by_epoch[20] == pytest.approx(5e-3, rel=1e-12)
    assert by_epoch[9] < by_epoch[5] < by_epoch[10]
  else:  # one cosine over the 25 epochs: falling all the way
    assert all(np.diff(by_epoch[5:]) < 0)
    assert by_epoch[-1] > 5e-4


def test_an_unknown_cosine_reading_is_refused_naming_the_key():
  config = defaults.base_config()
  config.cosine = 'warm_restarts'
  with pytest.raises(errors.ConfigError, match=r'cosine.*annealing, restarts, single'):
    defaults.checked(config)


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
  config = synthetic_config(data_dir)
  with pytest.raises(train.TrainingDiverged) as info:
    train.train_and_evaluate(config, workdir, progress=False)
  assert isinstance(info.value, UserError)  # the CLI prints it as one line, exit 2
  message = str(info.value)
  assert 'nan' in message.lower()
  assert f'step {poison_after + 1}' in message
  assert 'step 8' in message and workdir in message  # names the last good checkpoint
  assert '\n' not in message

  # The checkpoint of epoch 1 is still there, restorable and finite.
  latest, best = workdir_lib.managers(workdir)  # pylint: disable=protected-access
  assert latest.all_steps() == [8] and best.all_steps() == [8]
  from limijax import model as model_lib  # pylint: disable=g-import-not-at-top
  tx, _ = schedule_lib.make_optimizer(config, steps_per_epoch=8)
  template = jax.eval_shape(lambda: train.init_state(model_lib.from_config(config), tx,
                                                     train.seed_key(0)))
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state = workdir_lib.restore_tree(latest, 8, 'state', template, here)['state']  # pylint: disable=protected-access
  assert int(state['step']) == 8
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
  trained = workdir_lib.load_run(workdir)
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
  model = model_lib.LimiNet(depthwise='grouped')  # compiles faster (tests/tiny_run.py)
  tx, schedule = schedule_lib.make_optimizer(config, steps_per_epoch=40)
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


# --------------------------------------------------------------------------- BatchNorm
def test_batchnorm_trains_its_statistics_and_load_run_restores_them(data_dir, tmp_path):
  # Both BatchNorm options in one run: the "w/o SES" stem (a depthwise-separable conv +
  # BatchNorm) and BatchNorm in every block after it (model.norm=batch; that SES itself
  # keeps its GroupNorm under model.norm=batch is tests/test_model.py's).
  from limijax import model as model_lib  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'bn')
  config = synthetic_config(data_dir, **{'model.stem': 'dsconv_bn', 'model.norm': 'batch'},
                            num_epochs=1)
  results = train.train_and_evaluate(config, workdir, progress=False)['runs'][0]
  run = workdir_lib.load_run(workdir)
  stats = run.model_state['batch_stats']
  fresh = model_lib.init(run.model, jax.random.PRNGKey(0))['batch_stats']
  assert 'ses' not in run.params and set(stats) == set(run.params)  # every module
  assert set(stats['lmb1']) == {'reduce_bn', 'branch0_bn', 'branch1_bn', 'fuse_bn'}
  # Initial running statistics are mean 0, var 1; training on images normalised per
  # dataset (not per batch) moves them.
  for (path, got), start in zip(jax.tree_util.tree_leaves_with_path(stats),
                                jax.tree_util.tree_leaves(fresh)):
    np.testing.assert_array_equal(start, 0 if 'mean' in jax.tree_util.keystr(path) else 1)
    assert not np.allclose(got, start), path
  # Evaluation uses the restored statistics: the test metrics of the run are what
  # evaluate_workdir gives, and another set of statistics gives other logits.
  assert evaluation.evaluate_workdir(workdir, 'test') == results['test']
  dataset_image = np.asarray(np.random.default_rng(1).normal(size=(1, 32, 32, 1)), np.float32)
  predict = evaluation.make_predict(run.model)
  with_stats = predict(run.params, run.model_state, dataset_image)
  with_fresh = predict(run.params, {'batch_stats': fresh}, dataset_image)
  assert not np.allclose(with_stats, with_fresh)


# --------------------------------------------------------------------------- data_wait
def test_prefetch_draws_exactly_n_in_order_and_raises_what_drawing_raised():
  source = iter(range(100))
  feed = input_pipeline.Prefetch(lambda: next(source), 5)
  assert [feed.get() for _ in range(5)] == [0, 1, 2, 3, 4]
  feed.close()
  assert next(source) == 5  # the thread drew the epoch's batches and not one more

  def broken():
    raise UserError('cannot read images/x.png')
  feed = input_pipeline.Prefetch(broken, 3)
  with pytest.raises(UserError, match='images/x.png'):
    feed.get()
  feed.close()

  # Closed early (an exception in the training step): the thread stops, having drawn
  # at most the batch in hand plus its queue.
  drawn = []
  feed = input_pipeline.Prefetch(lambda: drawn.append(len(drawn)) or drawn[-1], 1000, depth=2)
  assert feed.get() == 0
  feed.close()
  assert 1 <= len(drawn) <= 4


def test_train_lines_say_how_much_of_the_time_went_waiting_for_batches(
    data_dir, tmp_path, monkeypatch, tiny_run, caplog):
  from limijax import input_pipeline  # pylint: disable=g-import-not-at-top
  def records(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return [r for r in map(json.loads, f) if r['event'] == 'train']

  # The shared run: every train line has it, a fraction.
  shared = records(tiny_run[0])
  assert all(0.0 <= r['data_wait'] <= 1.0 for r in shared)
  # An input pipeline that takes 100 ms a sample (400 ms a batch of 4) against a step of
  # tens of ms: the loop waits for batches much of the time. Epoch 1 hides it (the
  # buffers of Grain's thread and of the loop's prefetch thread fill while the step
  # compiles). In epoch 2 (steps 9-16) at most Grain's 4 buffered batches are ready;
  # steps 9 and 10 use two and make a window of their own (a line every 10 steps), so the
  # last window, steps 11-16, waits for 4 of its 6 batches: about 1.6 s against well
  # under a second of steps (a fraction over 0.6 even at 100 ms a step).
  real_map = input_pipeline.Normalise.map

  def slow_map(self, element):
    time.sleep(0.1)
    return real_map(self, element)

  monkeypatch.setattr(input_pipeline.Normalise, 'map', slow_map)
  workdir = str(tmp_path / 'slow')
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(synthetic_config(data_dir, num_epochs=2, tophat_baseline=False),
                             workdir, progress=False)
  last = [r for r in records(workdir) if r['epoch'] == 2][-1]
  assert last['step'] == 16 and last['data_wait'] > 0.3, last
  # ... and one warning line says what to change (once a run, however many windows wait).
  slow = [r.getMessage() for r in caplog.records if 'waited for its input pipeline' in r.getMessage()]
  assert len(slow) == 1 and 'data.num_workers=0' in slow[0], slow


# --------------------------------------------------------------------------- checkpoints
def test_checkpoints_are_packed_and_another_layout_is_refused(tiny_run, tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  workdir, _ = tiny_run
  run = workdir_lib.load_run(workdir)
  leaves = jax.tree.leaves({'params': run.params, 'model_state': run.model_state})
  # The shared run's best checkpoint: one flat float32 array, the leaves in order.
  best = os.path.join(workdir, 'checkpoints', 'best')
  step = max(int(d) for d in os.listdir(best) if d.isdigit())
  packed = ocp.StandardCheckpointer().restore(os.path.join(best, str(step), 'model'))
  assert set(packed) == {'float32'}
  np.testing.assert_array_equal(
      packed['float32'], np.concatenate([np.ravel(np.asarray(x)) for x in leaves]))

  # A best checkpoint in another layout (one entry per array, no 'layout' in its meta,
  # as a version before the packed checkpoints wrote it) is refused in one line.
  old = tmp_path / 'old'
  (old / 'checkpoints').mkdir(parents=True)
  with open(os.path.join(workdir, 'config.json')) as f:
    (old / 'config.json').write_text(f.read())
  manager = workdir_lib.managers(str(old))[1]
  manager.save(step, args=ocp.args.Composite(
      model=ocp.args.StandardSave({'params': run.params, 'model_state': run.model_state}),
      meta=ocp.args.JsonSave({'epoch': run.epoch, 'mean': run.mean, 'std': run.std})))
  manager.wait_until_finished()
  with pytest.raises(UserError, match='a checkpoint of another layout'):
    workdir_lib.load_run(str(old))


def test_another_config_is_refused_by_a_workdir_whose_seed_folders_hold_checkpoints(tmp_path):
  first = synthetic_config('unused', num_seeds=2)
  workdir = str(tmp_path / 'w')
  workdir_lib.claim_workdir(first, workdir)
  config_json = (tmp_path / 'w' / 'config.json').read_text()
  # No checkpoint anywhere yet: another config may take the workdir over.
  workdir_lib.claim_workdir(synthetic_config('unused', num_seeds=2, seed=5), workdir)
  workdir_lib.claim_workdir(first, workdir)
  # A seed's checkpoint (a num_seeds run keeps them in seed_<seed>/): refused, untouched.
  (tmp_path / 'w' / 'seed_1' / 'checkpoints' / 'latest' / '8').mkdir(parents=True)
  with pytest.raises(UserError, match='another config'):
    workdir_lib.claim_workdir(synthetic_config('unused', num_seeds=2, seed=5), workdir)
  assert (tmp_path / 'w' / 'config.json').read_text() == config_json


def test_track_test_reports_the_best_test_epoch_without_choosing_by_it(tiny_run):
  workdir, results = tiny_run
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    events = [json.loads(l) for l in f if l.strip()]
  tracked = [r for r in events if r['event'] == 'test_track']
  vals = [r for r in events if r['event'] == 'val']
  assert [r['epoch'] for r in tracked] == [r['epoch'] for r in vals]  # one per validation
  best = results['best_test_epoch']
  top = max(tracked, key=lambda r: r['miou'])
  assert best['epoch'] == top['epoch'] and best['test']['miou'] == top['miou']
  # The checkpoint tested is still the validation's choice; its test score is the tracked
  # score of that epoch, and never above the best test epoch's.
  assert results['best_epoch'] == max(vals, key=lambda r: r['miou'])['epoch']
  at_best_val = next(r for r in tracked if r['epoch'] == results['best_epoch'])
  assert results['test']['miou'] == pytest.approx(at_best_val['miou'], abs=1e-12)
  assert results['test']['miou'] <= best['test']['miou']
