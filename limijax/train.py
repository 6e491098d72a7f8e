"""Training Limi-Net: the train state, the step, and ``train_and_evaluate(config, workdir)``.

What a run writes into its workdir is :mod:`limijax.workdir`'s (config, checkpoints) and
:mod:`limijax.run_log`'s (metrics, curves); the schedule and optimiser are
:mod:`limijax.schedule`'s; validation and the final test are :mod:`limijax.evaluation`'s.

The loop keeps the device busy: the step counter lives on the host, the step's outputs
are fetched (and checked for NaN) once per ``log_every_steps`` window, and each epoch's
batches are drawn and put on the device by a background thread
(:class:`limijax.input_pipeline.Prefetch`) while earlier steps run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import grain
from tqdm import tqdm

from limijax import data as data_lib
from limijax import defaults
from limijax import distributed
from limijax import evaluation
from limijax import input_pipeline
from limijax import losses
from limijax import metrics as metrics_lib
from limijax import model as model_lib
from limijax.errors import UserError
from limijax.evaluation import evaluate_source, make_predict
from limijax.run_log import PLOT_EVERY_S, MetricsLog, plot_curves
from limijax.schedule import make_optimizer
from limijax.workdir import (PACKED, claim_workdir, load_run, managers, pack, restore_tree,
                             split_variables, write_best)


class TrainingDiverged(UserError):
  """The loss became NaN or infinite."""


# --------------------------------------------------------------------------- state
def init_state(model, tx, rng: jax.Array) -> dict:
  """The train state, a plain dict of arrays: ``params``; ``model_state`` (the other
  flax collections: ``batch_stats`` for the BatchNorm ablation stem, else empty);
  ``opt_state``; ``step``. Built from a ``jax.random`` key alone, so that several seeds
  can be vmapped, sharded or exported without changing its shape."""
  params, model_state = split_variables(model_lib.init(model, rng))
  return {'params': params, 'model_state': model_state, 'opt_state': _opt_init(tx)(params),
          'step': jnp.zeros((), jnp.int32)}


@functools.lru_cache(maxsize=16)
def _opt_init(tx):
  """``tx.init`` as one compiled program (the same zeros): run op by op, flattening the
  parameters compiled one small program per parameter shape, about 0.3 s at every start
  on a CPU."""
  return jax.jit(tx.init)


def abstract_state(model, tx) -> dict:
  """The shapes and dtypes of :func:`init_state`'s tree (to restore a checkpoint into),
  without tracing the model again (:func:`limijax.model.variable_shapes`)."""
  params, model_state = split_variables(model_lib.variable_shapes(model))
  return {'params': params, 'model_state': model_state,
          'opt_state': jax.eval_shape(tx.init, params),
          'step': jax.ShapeDtypeStruct((), jnp.int32)}


def seed_key(seed: int) -> jax.Array:
  """The model-init key of the user-facing ``seed``."""
  return jax.random.PRNGKey(seed)


def make_train_step(model, tx, schedule, loss_cfg, num_seeds: int = 1, seed_mesh=None):
  """:func:`_make_train_step`, one per model, optimiser, loss settings and layout in a
  process."""
  frozen = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                        for k, v in loss_cfg.items()))
  return _make_train_step(model, tx, schedule, frozen, num_seeds, seed_mesh)


@functools.lru_cache(maxsize=16)
def _make_train_step(model, tx, schedule, frozen_loss: tuple, num_seeds: int, seed_mesh):
  """The jitted update ``(state, batch) -> (state, outputs)``; with ``num_seeds > 1`` both
  carry a leading seed axis and one ``vmap``-ed step updates every seed (its 1x1
  convolutions traced as matrix products, :func:`limijax.model.pointwise_as_matmul`). With
  ``seed_mesh`` (seeds split over its ``data`` axis) each device runs the step of its own
  seeds (``shard_map``): the seeds never talk to each other, and XLA's automatic
  partitioner mishandles the batched convolutions that ``vmap`` makes."""
  loss_cfg = ml_collections.ConfigDict(dict(frozen_loss))

  def train_step(state, batch):
    params, model_state = state['params'], state['model_state']

    def loss_fn(params):
      variables = {'params': params, **model_state}
      if model_state:
        (final, sides), new_state = model.apply(variables, batch['image'], train=True,
                                                mutable=list(model_state))
      else:
        (final, sides), new_state = model.apply(variables, batch['image'], train=True), {}
      total, terms = losses.loss_from_config(final, sides, batch['mask'], loss_cfg)
      return total, (terms, new_state)

    (loss, (terms, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, state['opt_state'], params)
    new = {'params': optax.apply_updates(params, updates),
           'model_state': {**model_state, **new_state},
           'opt_state': opt_state, 'step': state['step'] + 1}
    out = {'loss': loss, 'lr': schedule(state['step']), **{f'loss_{k}': v for k, v in terms.items()}}
    return new, out

  if num_seeds == 1:
    return jax.jit(train_step, donate_argnums=0)

  def matmul_train_step(state, batch):  # traced with 1x1 convolutions as matrix products
    with model_lib.pointwise_as_matmul():
      return train_step(state, batch)

  step = jax.vmap(matmul_train_step)
  if seed_mesh is not None:
    from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
    # check_vma off: the seeds use no collective, and the shift form's hand-written
    # gradients (limijax.depthwise) do not carry shard_map's per-device type annotations
    # (with the check on, its kernel gradients are refused as "manual axis types do not
    # match").
    step = jax.shard_map(step, mesh=seed_mesh, in_specs=P('data'), out_specs=P('data'),
                         check_vma=False)
  return jax.jit(step, donate_argnums=0)


# --------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class _Run:
  """One seed's run folder and its bookkeeping during training."""
  seed: int
  workdir: str
  config: ml_collections.ConfigDict
  latest: Any
  best: Any
  log: MetricsLog
  train_iter: Any
  meta: dict
  wall0: float = 0.0
  diverged: str | None = None
  last_plot: float = 0.0  # time.time() of the last curves.png


def seed_config(config: ml_collections.ConfigDict, k: int) -> ml_collections.ConfigDict:
  """The single-run config of seed ``config.seed + k`` of a ``num_seeds`` run."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.seed, c.num_seeds = config.seed + k, 1
  return c


def seed_workdirs(config, workdir: str) -> list[str]:
  """The run folders of a run: ``workdir`` itself, or ``workdir/seed_<seed>`` per seed."""
  if config.num_seeds == 1:
    return [workdir]
  return [os.path.join(workdir, f'seed_{config.seed + k}') for k in range(config.num_seeds)]


def _stack(trees):
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


@functools.partial(jax.jit, static_argnums=1)
def _index(tree, k: int):
  """Seed ``k``'s tree of a stacked one, as one compiled program (op by op, indexing
  compiled one program per leaf shape)."""
  return jax.tree.map(lambda x: x[k], tree)


def data_parallel(num_seeds: int, batch_size: int, devices=None):
  """Shardings that spread a step over every device, or None on one device.

  One ``data`` mesh axis over the devices (``jax.devices()``: those of every process of
  a multi-process run). With ``num_seeds`` divisible by the device count and a single
  process, the seed axis is split (each device trains whole seeds: params, optimiser
  state and batches of its seeds); otherwise the batch is split and the state
  replicated, which is how several processes always train (every process then holds the
  parameters it evaluates). The global batch size stays ``batch_size``. Returns
  ``(state_sharding, batch_sharding, split)`` with ``split`` ``'seeds'`` or ``'batch'``,
  or None when there is one device or the work cannot be split evenly (then a warning;
  with several processes, an error).
  """
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  if n == 1:
    return None
  mesh = Mesh(np.array(devices), ('data',))
  if num_seeds > 1 and num_seeds % n == 0 and jax.process_count() == 1:
    return NamedSharding(mesh, P('data')), NamedSharding(mesh, P('data')), 'seeds'
  if batch_size % n == 0:
    batch_spec = P('data') if num_seeds == 1 else P(None, 'data')
    return NamedSharding(mesh, P()), NamedSharding(mesh, batch_spec), 'batch'
  if jax.process_count() > 1:
    raise UserError(f'config key batch_size: {batch_size} does not divide over the {n} '
                    f'devices of the {jax.process_count()} processes')
  logging.warning('%d devices divide neither num_seeds (%d) nor batch_size (%d): training '
                  'on one device', n, num_seeds, batch_size)
  return None


def _restore_step(runs: list[_Run]) -> int | None:
  """The latest step every seed has a checkpoint of; newer ones are deleted, so that the
  seeds go on together from there (a kill may fall between two seeds' saves)."""
  steps = [set(r.latest.all_steps()) for r in runs]
  common = set.intersection(*steps)
  step = max(common) if common else None
  for r in runs:
    for s in sorted(r.latest.all_steps()):
      if step is None or s > step:
        r.latest.delete(s)
  return step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       progress: bool = True) -> dict:
  """Train (or resume) the run in ``workdir``, then test the best checkpoint.

  With ``num_seeds = K > 1`` the seeds ``seed .. seed + K - 1`` train together, their
  states stacked and one ``vmap``-ed step updating all of them; each seed keeps the data
  stream (crops, flips, ITS) its single run would have, picks its own best epoch and is
  written as a run folder of its own, ``workdir/seed_<seed>``, with the files a single
  run writes. A seed whose loss becomes NaN stops alone (a ``diverged`` line in its
  log, no results); the others go on. Returns the results of a single run, or
  ``{'runs': [results with 'seed' and 'workdir'], 'diverged': {seed: message}}``.
  """
  config = defaults.checked(config)
  t_start = time.time()
  primary = distributed.is_primary()  # the process that writes files
  progress = progress and primary
  if not primary:  # process 0 prepares the data once, the others then read it
    distributed.barrier('data prepared')
  dataset = data_lib.load_dataset(config.data)
  if primary:
    distributed.barrier('data prepared')
  for split in ('train', 'val', 'test'):
    if len(getattr(dataset, split)) == 0:
      raise UserError(f'the {split} split of {config.data.root or config.data.name} is empty')
  if len(dataset.train) < config.batch_size:
    raise UserError(f'config key batch_size: {config.batch_size} is larger than the '
                    f'{len(dataset.train)} training images')
  num_seeds = config.num_seeds
  claim_workdir(config, workdir, write=primary)
  seed_configs = ([config] if num_seeds == 1 else
                  [seed_config(config, k) for k in range(num_seeds)])
  dirs = seed_workdirs(config, workdir)
  for c, d in zip(seed_configs, dirs):
    if d != workdir:
      claim_workdir(c, d, write=primary)
  distributed.barrier('workdir claimed')
  from limijax import process  # pylint: disable=g-import-not-at-top
  logging.info('%s', process.described())  # what the command set up (limijax.process)

  model = model_lib.from_config(config)
  steps_per_epoch = input_pipeline.steps_per_epoch(len(dataset.train), config.batch_size)
  tx, schedule = make_optimizer(config, steps_per_epoch)
  shardings = data_parallel(num_seeds, config.batch_size)
  seeds_split = shardings is not None and shardings[2] == 'seeds'
  train_step = make_train_step(model, tx, schedule, config.loss, num_seeds=num_seeds,
                               seed_mesh=shardings[0].mesh if seeds_split else None)
  predict = make_predict(model)
  mean, std = float(dataset.mean), float(dataset.std)
  # Read once, not every epoch: on a GPU, decoding the validation images again took
  # longer than evaluating them.
  val_set = [dataset.val[i] for i in range(len(dataset.val))]
  # track_test: the test split scored at every validation too, only to report the best
  # test epoch as most papers do (never used to choose anything).
  test_set = [dataset.test[i] for i in range(len(dataset.test))] if config.track_test else None
  here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  runs = []
  for c, d in zip(seed_configs, dirs):
    train_iter = input_pipeline.make_train_iter(
        dataset.train, image_size=c.data.image_size, batch_size=c.batch_size,
        mean=mean, std=std, seed=c.seed, its_cfg=c.data.its,
        crop_target_prob=c.data.crop_target_prob, flips=c.data.flips,
        num_workers=c.data.num_workers)
    latest, best = managers(d, keep_latest=1 if num_seeds == 1 else 2)
    runs.append(_Run(seed=c.seed, workdir=d, config=c, latest=latest, best=best,
                     log=MetricsLog(d, enabled=primary), train_iter=train_iter,
                     meta={'epoch': 0, 'best_miou': -1.0, 'best_epoch': -1, 'mean': mean,
                           'std': std, 'log_size': 0, 'wall_time': 0.0, 'best_test': None}))

  step0 = _restore_step(runs)
  if step0 is not None:  # the shapes to restore into (tracing init costs seconds)
    template = abstract_state(model, tx)
  states = []
  for r in runs:
    if step0 is None:
      states.append(init_state(model, tx, seed_key(r.seed)))
      r.log.truncate(0)
      continue
    restored = restore_tree(r.latest, step0, 'state', template, here,
                             data=grain.checkpoint.CheckpointRestore(r.train_iter))
    states.append(restored['state'])
    r.meta = restored['meta']
    if not (math.isclose(r.meta['mean'], mean, rel_tol=1e-6) and
            math.isclose(r.meta['std'], std, rel_tol=1e-6)):
      raise UserError(f'the data under {config.data.root or config.data.name} changed since '
                      f'this run started (normalisation differs); use a new --workdir')
    r.log.truncate(r.meta['log_size'])
    logging.info('resuming %s at epoch %d (step %d)', r.workdir, r.meta['epoch'], step0)
  state = states[0] if num_seeds == 1 else _stack(states)
  del states
  if shardings is not None:
    state = distributed.put(state, shardings[0])
    logging.info('data parallel over %d devices (%s split)%s', shardings[0].mesh.size,
                 shardings[2], f' in {jax.process_count()} processes'
                 if jax.process_count() > 1 else '')
  else:
    # Committed to the device, as a restored state is: the train step then compiles to
    # the same program whether the run starts or resumes (one persistent-cache entry).
    state = jax.device_put(state, here)
  for r in runs:
    r.wall0 = time.time() - r.meta['wall_time']
    r.last_plot = time.time()  # first drawn PLOT_EVERY_S into training, or after the test
  start_epoch = runs[0].meta['epoch']
  step = start_epoch * steps_per_epoch  # kept on the host: the loop never waits on it

  def seed_state(k: int):
    return state if num_seeds == 1 else _index(state, k)

  def local(tree):
    """This process's copy of replicated arrays (every array, in a single process)."""
    return jax.tree.map(lambda x: x if x.is_fully_addressable else x.addressable_data(0), tree)

  def diverge(r: _Run, bad_step: int, loss: float, epoch: int) -> None:
    last = r.latest.latest_step()
    where = (f'the last good checkpoint (step {last}) is in {r.workdir}/checkpoints'
             if last is not None else 'no checkpoint was written yet')
    r.log.write('diverged', step=bad_step, epoch=epoch, loss=str(loss))
    r.diverged = (f'training stopped: the loss became {loss} at step {bad_step} '
                  f'(epoch {epoch}); {where}')
    if num_seeds == 1:
      raise TrainingDiverged(r.diverged)
    logging.warning('seed %d: %s; the other seeds go on', r.seed, r.diverged)
    if all(x.diverged for x in runs):
      raise TrainingDiverged(f'every seed diverged; seed {runs[0].seed}: {runs[0].diverged}')

  pending = []  # (step, device outputs) since the last log line
  window_start = [time.time()]
  data_wait = [0.0]  # seconds of the window spent waiting for the input pipeline
  warned_slow_input = [False]
  if jax.default_backend() != 'cpu' and config.data.num_workers == 0:
    logging.warning('data.num_workers is 0 on a %s: the input pipeline runs in the training '
                    'process and will not keep up with the device; set '
                    '--config.data.num_workers to about three quarters of the %d cores',
                    jax.default_backend().upper(), os.cpu_count() or 1)

  def start_window() -> None:  # a logging window: its rate and data_wait start afresh
    window_start[0] = time.time()
    data_wait[0] = 0.0

  def flush(epoch: int, bar) -> None:
    """Fetch the outputs since the last log line: check them for NaN, log their means."""
    if not pending:
      return
    outs = jax.device_get(local([o for _, o in pending]))
    steps = [s for s, _ in pending]
    elapsed = max(time.time() - window_start[0], 1e-9)
    rate = len(pending) / elapsed
    wait = min(data_wait[0] / elapsed, 1.0)
    for k, r in enumerate(runs):
      if r.diverged:
        continue
      per_step = [{key: float(v if num_seeds == 1 else v[k]) for key, v in o.items()}
                  for o in outs]
      for s, o in zip(steps, per_step):
        if not math.isfinite(o['loss']):
          diverge(r, s, o['loss'], epoch)
          break
      if r.diverged:
        continue
      means = {key: float(np.mean([o[key] for o in per_step])) for key in per_step[0]}
      means['lr'] = per_step[-1]['lr']  # the rate of the logged step, not a mean
      # data_wait: the share of the window spent waiting for batches (near 1: the input
      # pipeline is the bottleneck; near 0: the step is).
      r.log.write('train', step=steps[-1], epoch=epoch, wall_time=round(time.time() - r.wall0, 3),
                  steps_per_s=round(rate, 3), data_wait=round(wait, 3), **means)
      if k == 0:
        bar.set_postfix(loss=f'{means["loss"]:.4f}', lr=f'{means["lr"]:.2e}',
                        steps_per_s=f'{rate:.2f}')
    if wait > 0.5 and steps[0] > 1 and len(steps) > 1 and not warned_slow_input[0]:
      warned_slow_input[0] = True  # once a run: the line says what to change
      logging.warning('the training loop waited for its input pipeline %.0f%% of steps '
                      '%d-%d: with data.num_workers=%d the pipeline is the bottleneck; more '
                      'worker processes (this machine has %d cores) would train faster',
                      100 * wait, steps[0], steps[-1], config.data.num_workers,
                      os.cpu_count() or 1)
    pending.clear()
    start_window()

  def save_latest(r: _Run, k: int, epoch: int) -> None:
    r.meta.update(epoch=epoch, log_size=r.log.size(), wall_time=time.time() - r.wall0,
                  layout=PACKED)
    r.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(pack(seed_state(k))),
        data=grain.checkpoint.CheckpointSave(r.train_iter),
        meta=ocp.args.JsonSave(dict(r.meta))), force=True)

  def save_best(r: _Run, k: int, epoch: int, val: dict) -> None:
    if step in r.best.all_steps():
      return  # a resumed run redoing this epoch: the same parameters are already there
    s = seed_state(k)
    write_best(r.workdir, s['params'], s['model_state'],
               {'epoch': epoch, 'mean': mean, 'std': std, 'val': val}, step, manager=r.best)

  def draw():
    """The next batch of every seed, placed on the device(s)."""
    if num_seeds == 1:
      batch = next(runs[0].train_iter)
    else:
      batch = _stack([next(r.train_iter) for r in runs])
    if shardings is not None:
      return distributed.put(batch, shardings[1])
    return jax.device_put(batch, here)

  for epoch in range(start_epoch, config.num_epochs):
    bar = tqdm(range(steps_per_epoch), desc=f'epoch {epoch + 1}/{config.num_epochs}',
               leave=False, disable=not progress, dynamic_ncols=True)
    start_window()
    feed = input_pipeline.Prefetch(draw, steps_per_epoch)
    try:
      for i in bar:
        t_data = time.time()
        batch = feed.get()
        data_wait[0] += time.time() - t_data
        state, out = train_step(state, batch)
        step += 1
        pending.append((step, out))
        # A log line at step 1, every log_every_steps and at the end of each epoch (so a
        # window never spans a checkpoint and a resumed run logs the same means).
        if step == 1 or step % config.log_every_steps == 0 or i == steps_per_epoch - 1:
          flush(epoch + 1, bar)
    finally:
      feed.close()
    bar.close()
    done = epoch + 1
    evaluate_now = done % config.eval_every_epochs == 0 or done == config.num_epochs
    for k, r in enumerate(runs):
      if r.diverged:
        continue
      if evaluate_now:
        s = local(seed_state(k))
        val = evaluate_source(predict, s['params'], s['model_state'], val_set, mean, std,
                              desc='val', progress=progress,
                              batch_size=config.eval_batch_size)
        r.log.write('val', step=step, epoch=done,
                    wall_time=round(time.time() - r.wall0, 3), **val)
        logging.info('epoch %d%s: val %s', done, f' seed {r.seed}' if num_seeds > 1 else '',
                     metrics_lib.format_metrics(val))
        if val['miou'] > r.meta['best_miou']:
          r.meta.update(best_miou=val['miou'], best_epoch=done)
          save_best(r, k, done, val)
        if test_set is not None:
          test = evaluate_source(predict, s['params'], s['model_state'], test_set, mean, std,
                                 desc='test_track', progress=progress,
                                 batch_size=config.eval_batch_size)
          r.log.write('test_track', step=step, epoch=done,
                      wall_time=round(time.time() - r.wall0, 3), **test)
          best_test = r.meta.get('best_test')
          if best_test is None or test['miou'] > best_test['test']['miou']:
            r.meta['best_test'] = {'epoch': done, 'test': test}
        if primary and time.time() - r.last_plot >= PLOT_EVERY_S:
          # Drawing costs ~0.3 s: redrawn at most every PLOT_EVERY_S, and after the test.
          plot_curves(r.log.read(), os.path.join(r.workdir, 'curves.png'))
          r.last_plot = time.time()
      save_latest(r, k, done)
  for r in runs:
    r.latest.wait_until_finished()

  # Test the best checkpoint of each seed (paper 4.1); the top-hat floor once.
  baselines = {'tophat': evaluation.tophat_floor(dataset)} if config.tophat_baseline else {}
  all_results = []
  for r in runs:
    if r.diverged:
      continue
    run = load_run(r.workdir)
    best_meta = r.best.restore(r.best.latest_step(), args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']
    test = evaluate_source(predict, run.params, run.model_state, dataset.test, mean, std,
                           desc='test', progress=progress,
                           batch_size=config.eval_batch_size)
    results = {
        'best_epoch': best_meta['epoch'],
        'val': best_meta['val'],
        'test': test,
        'baselines': baselines,
        'params': model_lib.count_params(model_lib.inference_params(run.params)),
        'train_params': model_lib.count_params(run.params),
        'steps': step,
        'train_wall_time_s': round(r.meta['wall_time'], 1),
        'num_images': {'train': len(dataset.train), 'val': len(dataset.val),
                       'test': len(dataset.test)},
        'normalisation': {'mean': mean, 'std': std},
        'dataset': {'name': dataset.name, 'layout': dataset.layout},
    }
    if config.track_test and r.meta.get('best_test'):
      # The epoch whose test mIoU was highest, as most papers report: chosen on test.
      results['best_test_epoch'] = r.meta['best_test']
    r.log.write('test', step=step, epoch=best_meta['epoch'], **test)
    if primary:
      plot_curves(r.log.read(), os.path.join(r.workdir, 'curves.png'))
      tmp = os.path.join(r.workdir, 'results.json.tmp')
      with open(tmp, 'w') as f:
        json.dump(results, f, indent=2)
      os.replace(tmp, os.path.join(r.workdir, 'results.json'))
    logging.info('done in %.1f s: %stest mIoU %.4f (best epoch %d)', time.time() - t_start,
                 f'seed {r.seed}: ' if num_seeds > 1 else '', test['miou'], best_meta['epoch'])
    all_results.append({'seed': r.seed, 'workdir': r.workdir, **results})
  if num_seeds == 1:
    return {k: v for k, v in all_results[0].items() if k not in ('seed', 'workdir')}
  return {'runs': all_results, 'baselines': baselines,
          'diverged': {r.seed: r.diverged for r in runs if r.diverged}}
