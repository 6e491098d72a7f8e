"""Training Limi-Net: the train state, the step, and ``train_and_evaluate(config, workdir)``.

Each seed of a run is a :class:`limijax.seed_run.SeedRun` (its folder, state, input
stream, checkpoints, validation and test); what a run writes into its workdir is
:mod:`limijax.workdir`'s (config, checkpoints) and :mod:`limijax.run_log`'s (metrics,
curves); the schedule and optimiser are :mod:`limijax.schedule`'s; where each seed's
state lives on several devices is :func:`limijax.distributed.place_seeds`'s.

The loop keeps the device busy: the step counter lives on the host, the step's outputs
are fetched (and checked for NaN) once per ``log_every_steps`` window, and each epoch's
batches are drawn and put on the device by a background thread
(:class:`limijax.input_pipeline.Prefetch`) while earlier steps run.
"""

from __future__ import annotations

import functools
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax
from tqdm import tqdm

from limijax import data as data_lib
from limijax import defaults
from limijax import distributed
from limijax import evaluation
from limijax import input_pipeline
from limijax import losses
from limijax import model as model_lib
from limijax.errors import UserError
from limijax.evaluation import make_predict
from limijax.schedule import make_optimizer
from limijax.seed_run import SeedRun, TrainWindow, restore_step, seed_config, seed_workdirs
from limijax.workdir import claim_workdir, split_variables


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
  parameters compiled one small program per parameter shape at every start."""
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


# --------------------------------------------------------------------------- steps
def make_train_step(model, tx, schedule, loss_cfg):
  """One seed's jitted update ``(state, batch) -> (state, outputs)``, one per model,
  optimiser and loss settings in a process. Every seed of every run takes this step,
  alone or beside others, so a seed's arithmetic never depends on how it was run."""
  return jax.jit(_step_function(model, tx, schedule, _frozen(loss_cfg)), donate_argnums=0)


def make_vectorised_step(model, tx, schedule, loss_cfg, size: int):
  """``size`` seeds' updates as one program, ``(states, batches) -> (states, outputs)``
  over tuples: the seeds are stacked, one ``vmap``-ed step (1x1 convolutions traced as
  matrix products, ``LimiNet.pointwise = 'matmul'``: under ``vmap`` a convolution
  becomes a slow grouped one) updates them, and they are split again. Used
  with ``vectorise_seeds`` only: faster on a GPU, but each seed rounds differently from
  the same seed trained alone."""
  return _vectorised_step(model, tx, schedule, _frozen(loss_cfg), size)


def _frozen(loss_cfg) -> tuple:
  return tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                      for k, v in loss_cfg.items()))


@functools.lru_cache(maxsize=16)
def _vectorised_step(model, tx, schedule, frozen_loss: tuple, size: int):
  # The same network and parameters, its 1x1 convolutions traced as matrix products.
  matmul_step = _step_function(model.clone(pointwise='matmul'), tx, schedule, frozen_loss)

  def stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)

  def split(tree):
    return tuple(jax.tree.map(functools.partial(lambda k, x: x[k], k), tree)
                 for k in range(size))

  def step(states, batches):
    new, outs = jax.vmap(matmul_step)(stack(states), stack(batches))
    return split(new), split(outs)

  return jax.jit(step, donate_argnums=0)


@functools.lru_cache(maxsize=16)
def _step_function(model, tx, schedule, frozen_loss: tuple):
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
    out = {'loss': loss, 'lr': schedule(state['step']),
           **{f'loss_{k}': v for k, v in terms.items()}}
    return new, out

  return train_step


def step_groups(placements: list[distributed.Placement], vectorise: bool) -> list[list[int]]:
  """The seeds each step call updates: one seed a call, or with ``vectorise`` the seeds
  of each device in one call (:func:`make_vectorised_step`; a seed whose state spans
  several devices still goes alone)."""
  if not vectorise:
    return [[k] for k in range(len(placements))]
  groups: dict = {}
  for k, p in enumerate(placements):
    groups.setdefault(p.state if len(p.state.device_set) == 1 else k, []).append(k)
  return list(groups.values())


def _load_data(config, primary: bool):
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
  if jax.default_backend() != 'cpu' and config.data.num_workers == 0:
    logging.warning('data.num_workers is 0 on a %s: the input pipeline runs in the training '
                    'process and will not keep up with the device; set '
                    '--config.data.num_workers to about three quarters of the %d cores',
                    jax.default_backend().upper(), os.cpu_count() or 1)
  return dataset


# --------------------------------------------------------------------------- the loop
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       progress: bool = True) -> dict:
  """Train (or resume) the run in ``workdir``, then test each seed's best checkpoint.

  A run trains the seeds ``seed .. seed + num_seeds - 1`` (one by default). Each seed
  is a :class:`SeedRun` with the data stream (crops, flips, ITS), the step
  (:func:`make_train_step`) and the best-epoch choice of the same seed trained alone, so
  its ``results.json`` does not depend on how many seeds ran beside it; with
  ``num_seeds > 1`` each is written as a run folder of its own, ``workdir/seed_<seed>``.
  A seed whose loss becomes NaN stops alone (a ``diverged`` line in its log, no results);
  the others go on, and when every seed has diverged :class:`TrainingDiverged` is raised.
  Returns ``{'runs': [results with 'seed' and 'workdir'], 'baselines': {...},
  'diverged': {seed: message}}``.
  """
  # ---------------------------------------------------------------- data and folders
  config = defaults.checked(config)
  t_start = time.time()
  primary = distributed.is_primary()  # the process that writes files
  progress = progress and primary
  dataset = _load_data(config, primary)
  seed_configs = [seed_config(config, k) for k in range(config.num_seeds)]
  dirs = seed_workdirs(config, workdir)
  claim_workdir(config, workdir, write=primary)
  for c, d in zip(seed_configs, dirs):
    if d != workdir:
      claim_workdir(c, d, write=primary)
  distributed.barrier('workdir claimed')
  from limijax import process  # pylint: disable=g-import-not-at-top
  logging.info('%s', process.described())  # what the command set up (limijax.process)

  # ---------------------------------------------------------------- model and steps
  model = model_lib.from_config(config)
  steps_per_epoch = input_pipeline.steps_per_epoch(len(dataset.train), config.batch_size)
  tx, schedule = make_optimizer(config, steps_per_epoch)
  placements, parallel = distributed.place_seeds(config.num_seeds, config.batch_size)
  if parallel:
    logging.info('%s', parallel)
  groups = step_groups(placements, config.vectorise_seeds)
  train_step = make_train_step(model, tx, schedule, config.loss)
  group_steps = {len(g): make_vectorised_step(model, tx, schedule, config.loss, len(g))
                 for g in groups if len(g) > 1}
  predict = make_predict(model)
  # Read once, not every epoch: on a GPU, decoding the validation images again took
  # longer than evaluating them. track_test: the test split scored at every validation
  # too, only to report the best test epoch as most papers do.
  val_set = [dataset.val[i] for i in range(len(dataset.val))]
  test_set = [dataset.test[i] for i in range(len(dataset.test))] if config.track_test else None

  # ---------------------------------------------------------------- start or resume
  runs = [SeedRun(c, d, dataset, p, primary, keep_latest=1 if len(dirs) == 1 else 2)
          for c, d, p in zip(seed_configs, dirs, placements)]
  step0 = restore_step(runs)
  template = abstract_state(model, tx) if step0 is not None else None
  for r in runs:
    r.start(functools.partial(init_state, model, tx, seed_key(r.seed)), step0, template)
  start_epoch = runs[0].meta['epoch']
  step = start_epoch * steps_per_epoch  # kept on the host: the loop never waits on it
  window = TrainWindow(config.data.num_workers)
  names = [f' seed {r.seed}' if len(runs) > 1 else '' for r in runs]

  # ---------------------------------------------------------------- train
  for epoch in range(start_epoch, config.num_epochs):
    bar = tqdm(range(steps_per_epoch), desc=f'epoch {epoch + 1}/{config.num_epochs}',
               leave=False, disable=not progress, dynamic_ncols=True)
    window.start()
    feed = input_pipeline.Prefetch(lambda: [r.next_batch() for r in runs], steps_per_epoch)
    try:
      for i in bar:
        t_data = time.time()
        batches = feed.get()
        window.data_wait += time.time() - t_data
        step += 1
        window.pending.append((step, _step_seeds(runs, groups, batches, train_step, group_steps)))
        # A log line at step 1, every log_every_steps and at the end of each epoch (so a
        # window never spans a checkpoint and a resumed run logs the same means).
        if step == 1 or step % config.log_every_steps == 0 or i == steps_per_epoch - 1:
          window.flush(runs, epoch + 1, bar)
          _stop_if_all_diverged(runs)
    finally:
      feed.close()
    bar.close()
    done = epoch + 1
    for r, name in zip(runs, names):
      if r.diverged:
        continue
      if done % config.eval_every_epochs == 0 or done == config.num_epochs:
        r.validate(predict, val_set, test_set, step, done, progress, name)
      r.save_latest(step, done)
  for r in runs:
    r.latest.wait_until_finished()

  # ---------------------------------------------------------------- test
  baselines = {'tophat': evaluation.tophat_floor(dataset)} if config.tophat_baseline else {}
  results = []
  for r, name in zip(runs, names):
    if not r.diverged:
      results.append({'seed': r.seed, 'workdir': r.workdir,
                      **r.test(predict, dataset, baselines, step, progress)})
      logging.info('done in %.1f s:%s test mIoU %.4f (best epoch %d)', time.time() - t_start,
                   name, results[-1]['test']['miou'], results[-1]['best_epoch'])
  return {'runs': results, 'baselines': baselines,
          'diverged': {r.seed: r.diverged for r in runs if r.diverged}}


def _step_seeds(runs: list[SeedRun], groups, batches, train_step, group_steps) -> list:
  """One step of every seed that has not diverged (a group of vectorised seeds steps
  whole); returns each seed's step outputs (None for a seed not stepped)."""
  outs = [None] * len(runs)
  for g in groups:
    if len(g) == 1 and not runs[g[0]].diverged:
      runs[g[0]].state, outs[g[0]] = train_step(runs[g[0]].state, batches[g[0]])
    elif len(g) > 1:
      states, group_outs = group_steps[len(g)](tuple(runs[k].state for k in g),
                                               tuple(batches[k] for k in g))
      for k, state, out in zip(g, states, group_outs):
        runs[k].state, outs[k] = state, out
  return outs


def _stop_if_all_diverged(runs: list[SeedRun]) -> None:
  if all(r.diverged for r in runs):
    first = runs[0].diverged
    raise TrainingDiverged(first if len(runs) == 1 else
                           f'every seed diverged; seed {runs[0].seed}: {first}')
