"""Training and evaluation of Limi-Net: ``train_and_evaluate(config, workdir)``.

The workdir is the unit of a run (the README's "What a run prints and writes"):

* ``config.json``   - the resolved config; a workdir made by another config is refused.
* ``checkpoints/latest`` - the state to resume from (params, optimiser, step, epoch,
  the Grain iterator's position, the normalisation, the best score so far), saved at
  the end of every epoch; ``checkpoints/best`` - the params with the best validation
  mIoU. Each tree is stored packed into one flat array per dtype (see ``_PACKED``).
  Orbax writes each checkpoint to a temporary folder and renames it when
  complete, so a process killed at any moment leaves the previous one intact.
* ``metrics.jsonl`` - one JSON object per event (``train``, ``val``, ``test``); on resume
  it is cut back to what it held at the checkpoint, so a resumed run writes the same
  lines as an uninterrupted one.
* ``results.json``, ``curves.png``, ``tb/`` (TensorBoard event files).

Learning rate (paper 4.2): AdamW at ``learning_rate`` under PyTorch's ``LinearLR``
(``warmup_steps`` iterations rising from ``warmup_start_factor`` to 1, stepped per
iteration) chained with ``CosineAnnealingLR`` (``T_max = cosine_period_epochs``,
``eta_min = min_learning_rate``, stepped per epoch), reproduced step by step by
:func:`lr_table`. Like PyTorch's scheduler, the cosine does not stop after its period:
the rate falls to ``eta_min`` at epoch 10, climbs back to ``lr`` at epoch 20, and so on.

The loop keeps the device busy: the step counter lives on the host, the step's outputs
are fetched (and checked for NaN) once per ``log_every_steps`` window, and each epoch's
batches are drawn and put on the device by a background thread (:class:`Prefetch`) while
earlier steps run.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import queue
import shutil
import sys
import threading
import time
from typing import Any, Callable
import weakref

from absl import logging
import jax
import jax.numpy as jnp
from jax import lax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import grain
from tqdm import tqdm

from limijax import data as data_lib
from limijax import defaults
from limijax import distributed
from limijax import input_pipeline
from limijax import losses
from limijax import metrics as metrics_lib
from limijax import model as model_lib
from limijax.errors import UserError


# Keys of metrics.jsonl's lines that measure this machine's speed rather than the run:
# they differ between two runs that are otherwise identical line for line.
TIMING_KEYS = ('wall_time', 'steps_per_s', 'data_wait')


class TrainingDiverged(UserError):
  """The loss became NaN or infinite."""


# --------------------------------------------------------------------------- schedule
def lr_table(config, steps_per_epoch: int, num_steps: int) -> np.ndarray:
  """The learning rate of every step, exactly as PyTorch computes it for the paper's recipe.

  That recipe chains two schedulers on one optimiser: ``LinearLR(start_factor, 1,
  total_iters=warmup_steps)`` stepped after every iteration and
  ``CosineAnnealingLR(T_max=cosine_period_epochs, eta_min=min_learning_rate)`` stepped
  after every epoch. Chained, each updates the current rate in its recursive form, so
  when warm-up outlasts the first epoch the result is not the product of the two closed
  forms; replaying the recursions (in float64) gives PyTorch's numbers step by step.
  """
  base, eta_min = float(config.learning_rate), float(config.min_learning_rate)
  period, warm = int(config.cosine_period_epochs), int(config.warmup_steps)
  start = float(config.warmup_start_factor)
  lr = base * start if warm > 0 else base
  out = np.empty(num_steps, np.float64)
  for t in range(num_steps):
    out[t] = lr  # the rate this step uses
    k = t + 1  # LinearLR.step() after the optimiser step
    if warm > 0 and k <= warm:
      lr *= 1.0 + (1.0 - start) / (warm * start + (k - 1) * (1.0 - start))
    if k % steps_per_epoch == 0:  # CosineAnnealingLR.step() at the end of an epoch
      e = k // steps_per_epoch
      if (e - 1 - period) % (2 * period) == 0:
        lr += (base - eta_min) * (1 - math.cos(math.pi / period)) / 2
      else:
        lr = ((1 + math.cos(math.pi * e / period)) / (1 + math.cos(math.pi * (e - 1) / period))
              * (lr - eta_min) + eta_min)
  return out


def make_schedule(config, steps_per_epoch: int):
  """``schedule(step)``: the rate of :func:`lr_table` for a run of ``num_epochs``."""
  table = jnp.asarray(lr_table(config, steps_per_epoch, config.num_epochs * steps_per_epoch),
                      jnp.float32)

  def schedule(step):
    return table[jnp.clip(jnp.asarray(step, jnp.int32), 0, table.shape[0] - 1)]

  return schedule


# The programs of a run are cached per process by the settings they depend on: a second
# run with the same settings in one process (a test suite, a notebook, seeds run one after
# another) reuses the jitted functions, so they are neither traced nor fetched from the
# compilation cache again.
_SCHEDULE_KEYS = ('learning_rate', 'min_learning_rate', 'cosine_period_epochs',
                  'warmup_steps', 'warmup_start_factor', 'num_epochs', 'weight_decay')


def make_optimizer(config, steps_per_epoch: int):
  """``(tx, schedule)``: AdamW under :func:`make_schedule`; the same objects for the same
  settings within a process."""
  return _optimizer(tuple(config[k] for k in _SCHEDULE_KEYS), steps_per_epoch)


@functools.lru_cache(maxsize=16)
def _optimizer(values: tuple, steps_per_epoch: int):
  config = ml_collections.ConfigDict(dict(zip(_SCHEDULE_KEYS, values)))
  schedule = make_schedule(config, steps_per_epoch)
  # On one flat vector of all parameters (optax.flatten): the same update formula per
  # element as on the tree, as one set of operations instead of one per parameter array
  # (134 in the default model); the training step's HLO shrinks by a third. XLA fuses the
  # gradients into the flattening, so results differ from the tree form in the last bits.
  return optax.flatten(optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8,
                                   weight_decay=config.weight_decay)), schedule


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


def split_variables(variables):
  return variables['params'], {k: v for k, v in variables.items() if k != 'params'}


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


# On a CPU, inference runs a batch through the model this many images at a time, one
# group after another (``lax.map``). Each layer's tensors then stay small enough for the
# caches: on a 2-core CPU a batch of 16 at 256x256 took 0.75-0.87x the time of the whole
# batch at once (groups of 2: 0.86-0.89x; 8: 0.85-0.91x). A GPU runs the whole batch.
INFER_CHUNK = 4


def infer_chunk(batch: int, backend: str | None = None) -> int:
  """How many images of a batch of ``batch`` run through the model together: on a CPU
  the largest divisor of ``batch`` up to :data:`INFER_CHUNK` (so every group has the
  same shape and the model is compiled once), elsewhere the whole batch."""
  if (backend or jax.default_backend()) != 'cpu' or batch <= INFER_CHUNK:
    return batch
  return max(d for d in range(1, INFER_CHUNK + 1) if batch % d == 0)


def new_predict(model):
  """A new jitted inference ``(params, model_state, image[, valid_hw, valid_masks]) ->
  logits``, with compilations of its own. ``valid_hw`` ((N, 2) int32): each image's own
  size inside a batch padded beyond it, ``valid_masks`` its
  :func:`limijax.model.valid_masks` (:meth:`limijax.model.LimiNet.__call__`). On a CPU
  the batch runs :func:`infer_chunk` images at a time; each image's logits are those of
  the whole batch at once to float rounding (the model treats every image alone)."""
  @jax.jit
  def predict(params, model_state, image, valid_hw=None, valid_masks=None):
    variables = {'params': params, **model_state}

    def run(args):
      x, hw, masks = args
      return model.apply(variables, x, train=False, valid_hw=hw, valid_masks=masks)

    n = image.shape[0]
    k = infer_chunk(n)
    if k == n:
      return run((image, valid_hw, valid_masks))
    groups = jax.tree.map(lambda a: a.reshape((n // k, k) + a.shape[1:]),
                          (image, valid_hw, valid_masks))
    out = lax.map(run, groups)
    return out.reshape((n,) + out.shape[2:])
  return predict


@functools.lru_cache(maxsize=16)
def make_predict(model):
  """:func:`new_predict`, one per model in a process."""
  return new_predict(model)


def scoring_threads() -> int:
  """Host threads that score evaluated images: up to 4, one per core. Labelling the
  components of a mask (scipy) releases the GIL for much of its time: on a 2-core CPU two
  threads scored 424 images of 256x256 in two thirds of one thread's time."""
  return max(1, min(4, os.cpu_count() or 1))


EVAL_SHAPES = 4  # at most this many padded shapes (programs) per evaluation


def shape_buckets(counts: dict[tuple[int, int], int], max_shapes: int = EVAL_SHAPES
                  ) -> dict[tuple[int, int], tuple[int, int]]:
  """Each padded (H, W) of ``counts`` (images of that shape) -> the shape it is evaluated
  at: at most ``max_shapes`` shapes, each as large as the largest of its members in
  both sides. Starting from one shape per size, the two groups whose merging adds the
  fewest padded pixels (over all their images) merge, until ``max_shapes`` remain; ties go
  to the smaller shapes, so the plan depends on the sizes alone."""
  if max_shapes < 1:
    raise ValueError(f'max_shapes must be >= 1, got {max_shapes}')
  groups = [([shape], shape, n) for shape, n in sorted(counts.items())]

  def pixels(g):
    return g[2] * g[1][0] * g[1][1]

  while len(groups) > max_shapes:
    best = None
    for i in range(len(groups)):
      for j in range(i + 1, len(groups)):
        a, b = groups[i], groups[j]
        shape = (max(a[1][0], b[1][0]), max(a[1][1], b[1][1]))
        merged = (a[0] + b[0], shape, a[2] + b[2])
        cost = pixels(merged) - pixels(a) - pixels(b)
        if best is None or cost < best[0]:
          best = (cost, i, j, merged)
    _, i, j, merged = best
    groups = [g for k, g in enumerate(groups) if k not in (i, j)] + [merged]
  return {member: shape for members, shape, _ in groups for member in members}


def shape_plan(counts: dict[tuple[int, int], int], max_shapes: int = EVAL_SHAPES
               ) -> tuple[dict[tuple[int, int], tuple[int, int]], set[tuple[int, int]]]:
  """``(plan, masked)``: :func:`shape_buckets` of ``counts``, and the shapes that hold
  other sizes than their own, which run with ``valid_hw`` (:func:`predict_in_shape`)."""
  plan = shape_buckets(counts, max_shapes)
  return plan, {shape for size, shape in plan.items() if size != shape}


def predict_in_shape(predict, params, model_state, images, shape: tuple[int, int],
                     masked: bool):
  """``predict``'s logits for ``images`` ((1, H, W, 1) each, H and W at most ``shape``'s)
  zero-padded into one batch of ``shape``; with ``masked`` the model is told each image's
  own size (``valid_hw`` and its host-made ``valid_masks``), so each one's logits equal
  those of the image alone to float rounding."""
  h, w = shape
  batch = np.zeros((len(images), h, w, 1), np.float32)
  for j, image in enumerate(images):
    batch[j, :image.shape[1], :image.shape[2]] = image[0]
  if not masked:
    return predict(params, model_state, batch)
  valid = np.array([image.shape[1:3] for image in images], np.int32)
  return predict(params, model_state, batch, valid, model_lib.valid_masks(valid, h, w))


_SIZE_COUNTS = weakref.WeakKeyDictionary()  # source -> {(len, multiple): counts}


def _padded_size_counts(source, multiple: int) -> dict[tuple[int, int], int]:
  """How many images of ``source`` have each padded (H, W): a pass that decodes every
  record (about 1 ms an image of 128x128), kept per source object where it can be (a
  dataset's validation split is evaluated again and again; plain lists cannot be kept)."""
  key = (len(source), multiple)
  try:
    return dict(_SIZE_COUNTS[source][key])
  except (KeyError, TypeError):
    pass
  counts = collections.Counter(input_pipeline.padded_size(source[i], multiple)
                               for i in range(len(source)))
  try:
    _SIZE_COUNTS.setdefault(source, {})[key] = dict(counts)
  except TypeError:  # not weakly referable (a list): measured again next time
    pass
  return dict(counts)


def evaluate_source(predict, params, model_state, source, mean: float, std: float,
                    desc: str = 'eval', progress: bool = True, batch_size: int = 16,
                    multiple: int = 16, max_shapes: int = EVAL_SHAPES) -> dict:
  """The field's metrics of the model on every image of ``source`` at its own size.

  Each image is normalised and padded at the bottom/right to a multiple of `multiple`,
  as one image at a time would be. The padded sizes are then grouped into at most
  ``max_shapes`` shapes (:func:`shape_buckets`), so the model compiles at most that many
  times whatever the number of sizes: an image smaller than its group's shape is padded
  further with zeros, and ``predict`` gets every image's own padded size (``valid_hw``,
  :meth:`limijax.model.LimiNet.__call__`), so that its outputs equal those of the image
  alone to float rounding. A group whose images all have its shape runs without
  ``valid_hw`` (nothing to mask). Images of a group are stacked into batches of
  `batch_size`; the last batch is filled with copies of its last image, whose outputs are
  dropped (every sample is normalised on its own, so they change nothing); a group with
  fewer images than `batch_size` runs one image at a time. The sizes come from a first
  pass over ``source``, kept for later evaluations of the same source object. While the device
  works on later batches, :func:`scoring_threads` host threads score the earlier ones
  (thresholding, connected components); per-image sums are added in the images' order,
  so the result equals scoring the images one at a time.

  ``predict(params, model_state, images[, valid_hw, valid_masks])``: :func:`make_predict`'s.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  counts = _padded_size_counts(source, multiple)
  plan, masked = shape_plan(counts, max_shapes)
  group_count = collections.Counter()
  for size, shape in plan.items():
    group_count[shape] += counts[size]
  # A group with fewer images than a batch runs one image at a time: the batch-1 program
  # then serves every such group of that shape, in every split (validation and test).
  group_batch = {shape: batch_size if n >= batch_size else 1
                 for shape, n in group_count.items()}

  acc = metrics_lib.MetricAccumulator()
  done: dict[int, metrics_lib.MetricAccumulator] = {}
  next_index = [0]
  buckets: dict[tuple, list[dict]] = {}
  in_flight: list[tuple[list[dict], concurrent.futures.Future]] = []
  threads = scoring_threads()

  def score(group: list[dict], logits) -> list[tuple[int, metrics_lib.MetricAccumulator]]:
    logits = np.asarray(logits)  # waits for the device
    out = []
    for j, ex in enumerate(group):
      one = metrics_lib.MetricAccumulator()
      pred = metrics_lib.binarize_logits(input_pipeline.crop_to_size(logits[j, ..., 0],
                                                                     ex['size']))
      one.update(pred, ex['mask'])
      out.append((ex['index'], one))
    return out

  def dispatch(shape: tuple, group: list[dict]) -> None:
    fill = [group[-1]] * (group_batch[shape] - len(group))
    logits = predict_in_shape(predict, params, model_state,
                              [ex['image'] for ex in group + fill], shape, shape in masked)
    in_flight.append((group, pool.submit(score, group, logits)))
    while len(in_flight) > 2 * threads:
      collect_oldest()

  def collect_oldest() -> None:
    group, future = in_flight.pop(0)
    done.update(future.result())
    while next_index[0] in done:  # sums in the images' order: float sums are exact
      acc.merge(done.pop(next_index[0]))
      next_index[0] += 1
    bar.update(len(group))

  bar = tqdm(total=len(source), desc=desc, leave=False, disable=not progress)
  with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix='limijax-score') as pool:
    for i, ex in enumerate(input_pipeline.eval_examples(source, mean=mean, std=std,
                                                        multiple=multiple)):
      ex['index'] = i
      shape = plan[tuple(ex['image'].shape[1:3])]
      group = buckets.setdefault(shape, [])
      group.append(ex)
      if len(group) == group_batch[shape]:
        dispatch(shape, buckets.pop(shape))
    for shape in list(buckets):
      dispatch(shape, buckets.pop(shape))
    while in_flight:
      collect_oldest()
  bar.close()
  assert not done and next_index[0] == len(source), 'every image is scored once'
  return acc.result()


# --------------------------------------------------------------------------- workdir
def _config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _has_checkpoint(workdir: str, subs=('latest', 'best')) -> bool:
  ckpt = os.path.join(workdir, 'checkpoints')
  return any(name.isdigit() for sub in subs
             for name in (os.listdir(os.path.join(ckpt, sub))
                          if os.path.isdir(os.path.join(ckpt, sub)) else ()))


def _holds_a_run(workdir: str) -> bool:
  """A checkpoint in ``workdir``, or in one of its ``seed_*`` run folders (num_seeds)."""
  if _has_checkpoint(workdir):
    return True
  names = os.listdir(workdir) if os.path.isdir(workdir) else []
  return any(n.startswith('seed_') and _has_checkpoint(os.path.join(workdir, n))
             for n in names)


def claim_workdir(config, workdir: str, write: bool = True) -> None:
  """Write config.json, or check that an existing one is this config (nothing written).

  A workdir whose run never saved a checkpoint (it stopped before its first epoch ended),
  neither itself nor in its ``seed_*`` folders, holds nothing to protect: another config
  may take it over. With ``write`` False (the other processes of a multi-process run) the
  checks are made and nothing is written.
  """
  path = os.path.join(workdir, 'config.json')
  mine = _config_dict(config)
  if os.path.exists(path) and not _holds_a_run(workdir):
    if write:
      logging.info('%s holds no checkpoint yet: its config.json is replaced', workdir)
  elif os.path.exists(path):
    try:
      with open(path) as f:
        theirs = json.load(f)
    except (OSError, ValueError) as e:
      raise UserError(f'{path} is unreadable ({e}); refusing to touch this workdir') from None
    diff = defaults.diff_keys(theirs, mine)
    if diff:
      shown = ', '.join(diff[:6]) + (' ...' if len(diff) > 6 else '')
      raise UserError(f'workdir {workdir} was made by another config (differs at {shown}); '
                      f'use a new --workdir, or the same config to resume')
    return
  if not os.path.exists(path) and os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise UserError(f'workdir {workdir} holds checkpoints but no config.json; refusing to '
                    f'overwrite it: use a new --workdir')
  if not write:
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(mine, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _managers(workdir: str, keep_latest: int = 1):
  opts = dict(create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True)
  ckpt = os.path.join(os.path.abspath(workdir), 'checkpoints')
  latest = ocp.CheckpointManager(
      os.path.join(ckpt, 'latest'), item_names=('state', 'data', 'meta'),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep_latest, **opts))
  best = ocp.CheckpointManager(
      os.path.join(ckpt, 'best'), item_names=('model', 'meta'),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts))
  return latest, best


# Checkpoint layout. Orbax writes every array of a tree as an entry of its own: the ~400
# small arrays of a train state took ~1 s to save (25x the time for the same numbers as
# two arrays), which on a GPU is as long as an epoch's steps. So a checkpoint holds a
# tree's leaves packed into one flat array per dtype, in ``jax.tree.leaves`` order, and
# its meta says ``'layout': 'packed'``; the tree's structure comes back from the model's
# config. Checkpoints of the older layout (one entry per array, no ``layout`` in the
# meta) still restore.
_PACKED = 'packed'


@jax.jit
def _pack(tree) -> dict:
  """``{dtype name: 1-D array}``: the leaves of ``tree`` of that dtype, raveled and
  concatenated in leaf order. Exact (no arithmetic), and one compiled program per tree
  structure, so it works on arrays sharded over several devices or processes too."""
  groups: dict[str, list] = {}
  for leaf in jax.tree.leaves(tree):
    groups.setdefault(jnp.dtype(leaf.dtype).name, []).append(jnp.ravel(leaf))
  return {name: jnp.concatenate(leaves) for name, leaves in groups.items()}


def _packed_abstract(template, sharding) -> dict:
  """The shapes :func:`_pack` gives for a tree shaped like ``template``, on ``sharding``."""
  sizes: dict[str, int] = {}
  for leaf in jax.tree.leaves(template):
    name = jnp.dtype(leaf.dtype).name
    sizes[name] = sizes.get(name, 0) + math.prod(leaf.shape)
  return {name: jax.ShapeDtypeStruct((n,), jnp.dtype(name), sharding=sharding)
          for name, n in sizes.items()}


def _unpack(packed: dict, template, sharding):
  """The tree shaped like ``template`` that :func:`_pack` packed, on ``sharding``."""
  flat = {name: np.asarray(a) for name, a in packed.items()}
  leaves, treedef = jax.tree.flatten(template)
  offsets: dict[str, int] = {}
  out = []
  for leaf in leaves:
    name = jnp.dtype(leaf.dtype).name
    start = offsets.get(name, 0)
    stop = start + math.prod(leaf.shape)
    out.append(flat[name][start:stop].reshape(leaf.shape))
    offsets[name] = stop
  if any(offsets[name] != a.size for name, a in flat.items()):
    raise UserError('a checkpoint holds a different number of values than the model '
                    'of its config.json')
  return jax.device_put(jax.tree.unflatten(treedef, out), sharding)


def _restore_tree(manager, step: int, item: str, template, sharding, **extra) -> dict:
  """Restore ``item`` (a tree shaped like ``template``, onto ``sharding``) and the
  ``meta`` of checkpoint ``step``, in either layout; ``extra`` restore args go along."""
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  packed = meta.get('layout') == _PACKED
  abstract = (_packed_abstract(template, sharding) if packed else jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), template))
  r = manager.restore(step, args=ocp.args.Composite(
      **{item: ocp.args.StandardRestore(abstract)}, **extra))
  tree = _unpack(r[item], template, sharding) if packed else r[item]
  return {**r, item: tree, 'meta': meta}


def write_best(workdir: str, params, model_state, meta: dict, step: int = 0,
               manager=None) -> None:
  """Save ``params`` and ``model_state`` as the run's best checkpoint at ``step``, with
  ``meta`` (``epoch``, ``mean``, ``std``, ``val``): the format :func:`load_run` reads.
  ``manager`` is the run's best-checkpoint manager when the caller holds one."""
  best = manager if manager is not None else _managers(workdir)[1]
  best.save(step, args=ocp.args.Composite(
      model=ocp.args.StandardSave(_pack({'params': params, 'model_state': model_state})),
      meta=ocp.args.JsonSave({**meta, 'layout': _PACKED})), force=True)
  best.wait_until_finished()


class MetricsLog:
  """metrics.jsonl writer (and TensorBoard mirror) that can be cut back on resume.

  ``metrics.jsonl`` is the record; ``tb/`` mirrors it. On resume the record is cut back to
  the checkpoint and ``tb/`` is written anew from what is left, so the steps a resumed run
  replays appear once in TensorBoard, not twice.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tb = None
    self.tb_dir = os.path.join(workdir, 'tb')
    self.enabled = enabled  # False: another process of a multi-process run writes it

  def truncate(self, size: int) -> None:
    if not self.enabled:
      return
    if os.path.exists(self.path):
      with open(self.path, 'r+b') as f:
        f.truncate(size)
    if self.tb is not None:
      self.tb.close()
      self.tb = None
    shutil.rmtree(self.tb_dir, ignore_errors=True)
    for record in self.read():
      self._mirror(record)

  def size(self) -> int:
    return os.path.getsize(self.path) if os.path.exists(self.path) else 0

  def write(self, event: str, **values) -> None:
    if not self.enabled:
      return
    record = {'event': event, **values}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    self._mirror(record)

  def _mirror(self, record: dict) -> None:
    event = record['event']
    values = {k: v for k, v in record.items() if k != 'event'}
    try:
      if self.tb is None:
        self.tb = _summary_writer_class()(self.tb_dir)
      for k, v in values.items():
        if isinstance(v, (int, float)) and k not in ('step', 'epoch'):
          self.tb.add_scalar(f'{event}/{k}', v, values.get('step', 0))
      self.tb.flush()
    except ImportError:  # TensorBoard files are a convenience, metrics.jsonl is the record
      pass

  def read(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(l) for l in f if l.strip()]


def _summary_writer_class():
  """tensorboardX's ``SummaryWriter``, imported without PyTorch.

  When torch is installed, tensorboardX imports it (1.6 s on a 2-core CPU, a tenth of a
  small run) only to recognise torch tensors, which are never passed here. Its import is
  refused for that moment unless torch is already loaded; torch itself stays importable.
  """
  if 'torch' in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules['torch']
  return SummaryWriter


PLOT_EVERY_S = 30.0  # the training loop redraws curves.png at most this often


def plot_curves(records: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  train = [r for r in records if r['event'] == 'train']
  val = [r for r in records if r['event'] == 'val']
  fig = Figure(figsize=(11, 3.4), dpi=100)
  ax1, ax2, ax3 = fig.subplots(1, 3)
  if train:
    ax1.plot([r['step'] for r in train], [r['loss'] for r in train], lw=1)
    ax1.set_yscale('log')
    ax3.plot([r['step'] for r in train], [r['lr'] for r in train], lw=1, color='tab:gray')
  ax1.set(title='training loss (C2F, eq. 4)', xlabel='step')
  ax3.set(title='learning rate', xlabel='step')
  for key, label in (('miou', 'mIoU'), ('niou', 'nIoU'), ('pd', 'Pd')):
    points = [(r['epoch'], r[key]) for r in val if r.get(key) is not None]  # pd None: no target
    if points:
      ax2.plot(*zip(*points), marker='.', label=label)
  tracked = [(r['epoch'], r['miou']) for r in records if r['event'] == 'test_track']
  if tracked:  # track_test: shown, never used to choose
    ax2.plot(*zip(*tracked), ls='--', lw=1, color='tab:gray', label='test mIoU')
  ax2.set(title='validation', xlabel='epoch', ylim=(0, 1))
  if val:
    ax2.legend(loc='lower right')
  # Fixed margins for this fixed figure: tight_layout measures every label first (a plot
  # took 0.47 s with it, 0.31 s without, on a 2-core CPU).
  fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.91, wspace=0.22)
  fig.savefig(path)


# --------------------------------------------------------------------------- loading a run
@dataclasses.dataclass
class TrainedRun:
  config: ml_collections.ConfigDict
  model: model_lib.LimiNet
  params: Any
  model_state: Any
  mean: float
  std: float
  epoch: int


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise UserError(f'{path} not found: --workdir must be a limijax run folder')
  with open(path) as f:
    stored = json.load(f)
  config = defaults.base_config()

  def fill(dst, src):
    for k, v in src.items():
      if isinstance(v, dict):
        fill(dst[k], v)
      else:
        dst[k] = tuple(v) if isinstance(v, list) else v

  fill(config, stored)
  return defaults.checked(config)


def load_run(workdir: str) -> TrainedRun:
  """The best checkpoint of a run, with its model and normalisation."""
  config = load_config(workdir)
  model = model_lib.from_config(config)
  best_dir = os.path.join(workdir, 'checkpoints', 'best')
  if not _has_checkpoint(workdir, ('best',)):  # before a manager creates folders
    raise UserError(f'{best_dir} holds no checkpoint yet')
  _, best = _managers(workdir)
  step = best.latest_step()
  # Onto this process's first device, whatever devices (and processes) trained the run.
  here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  params, model_state = split_variables(model_lib.variable_shapes(model))
  r = _restore_tree(best, step, 'model', {'params': params, 'model_state': model_state},
                    here)
  meta = r['meta']
  params, model_state = r['model']['params'], r['model']['model_state']
  return TrainedRun(config, model, params, model_state, meta['mean'], meta['std'],
                    meta['epoch'])


def evaluate_workdir(workdir: str, split: str = 'test') -> dict:
  if split not in ('test', 'val'):
    raise UserError(f'--split must be test or val, got {split!r}')
  run = load_run(workdir)
  dataset = data_lib.load_dataset(run.config.data)
  return evaluate_source(make_predict(run.model), run.params, run.model_state,
                         getattr(dataset, split), run.mean, run.std, desc=split,
                         batch_size=run.config.eval_batch_size)


# --------------------------------------------------------------------------- the loop
def _baseline(dataset) -> dict:
  from limijax import baselines  # pylint: disable=g-import-not-at-top

  def arrays(src):
    items = [src[i] for i in range(len(src))]
    return [it['image'] for it in items], [np.asarray(it['mask'], bool) for it in items]

  vi, vm = arrays(dataset.val)
  ti, tm = arrays(dataset.test)
  tuned = baselines.tune_tophat(vi, vm)
  result = baselines.tophat_metrics(ti, tm, tuned['size'], tuned['k'])
  return {**result, 'size': tuned['size'], 'k': tuned['k'], 'val_miou': tuned['val_miou']}


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


class Prefetch:
  """The next ``n`` results of ``draw()``, made by a background thread at most ``depth``
  ahead of the consumer (:meth:`get`, in order).

  The training loop draws each epoch's batches this way: reading, augmenting and moving a
  batch to the device overlaps the device's work and the host's dispatch of the step
  before it, instead of following them. The thread stops after ``n``, so once an epoch's
  batches are consumed the input iterators stand exactly where drawing them one by one
  would leave them (their state goes into the checkpoint). An exception in ``draw`` is
  raised by the :meth:`get` that would have returned its result.
  """

  def __init__(self, draw: Callable[[], Any], n: int, depth: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._work, args=(draw, n), daemon=True,
                                    name='limijax-prefetch')
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _work(self, draw, n: int) -> None:
    try:
      for _ in range(n):
        if not self._put((draw(), None)):
          return
    except BaseException as e:  # pylint: disable=broad-except  (re-raised by get)
      self._put((None, e))

  def get(self):
    item, error = self._queue.get()
    if error is not None:
      raise error
    return item

  def close(self) -> None:
    """Stops the thread (after the batch it is drawing) and waits for it."""
    self._stop.set()
    self._thread.join()


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
    latest, best = _managers(d, keep_latest=1 if num_seeds == 1 else 2)
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
    restored = _restore_tree(r.latest, step0, 'state', template, here,
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
                  layout=_PACKED)
    r.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_pack(seed_state(k))),
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
    feed = Prefetch(draw, steps_per_epoch)
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
                                 desc='test', progress=progress,
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
  baselines = {'tophat': _baseline(dataset)} if config.tophat_baseline else {}
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
