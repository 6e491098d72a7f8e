"""A run's folder: claiming it for a config, its checkpoints (packed), and loading it.

* ``config.json`` - the resolved config; a workdir made by another config is refused
  (:func:`claim_workdir`).
* ``checkpoints/latest`` - the state to resume from, saved at the end of every epoch;
  ``checkpoints/best`` - the params with the best validation mIoU (:func:`write_best`,
  read by :func:`load_run`). Each tree is stored packed into one flat array per dtype
  (:func:`pack`). Orbax writes each checkpoint to a temporary folder and renames it when
  complete, so a process killed at any moment leaves the previous one intact.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from limijax import defaults
from limijax import model as model_lib
from limijax.errors import UserError


def split_variables(variables):
  """``(params, model_state)``: the ``params`` collection, and the others (``batch_stats``
  of the BatchNorm ablation stem, else none)."""
  return variables['params'], {k: v for k, v in variables.items() if k != 'params'}


def config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def has_checkpoint(workdir: str, subs=('latest', 'best')) -> bool:
  ckpt = os.path.join(workdir, 'checkpoints')
  return any(name.isdigit() for sub in subs
             for name in (os.listdir(os.path.join(ckpt, sub))
                          if os.path.isdir(os.path.join(ckpt, sub)) else ()))


def holds_a_run(workdir: str) -> bool:
  """A checkpoint in ``workdir``, or in one of its ``seed_*`` run folders (num_seeds)."""
  if has_checkpoint(workdir):
    return True
  names = os.listdir(workdir) if os.path.isdir(workdir) else []
  return any(n.startswith('seed_') and has_checkpoint(os.path.join(workdir, n))
             for n in names)


def claim_workdir(config, workdir: str, write: bool = True) -> None:
  """Write config.json, or check that an existing one is this config (nothing written).

  A workdir whose run never saved a checkpoint (it stopped before its first epoch ended),
  neither itself nor in its ``seed_*`` folders, holds nothing to protect: another config
  may take it over. With ``write`` False (the other processes of a multi-process run) the
  checks are made and nothing is written.
  """
  path = os.path.join(workdir, 'config.json')
  mine = config_dict(config)
  if os.path.exists(path) and not holds_a_run(workdir):
    if write:
      logging.info('%s holds no checkpoint yet: its config.json is replaced', workdir)
  elif os.path.exists(path):
    try:
      with open(path) as f:
        theirs = json.load(f)
    except (OSError, ValueError) as e:
      raise UserError(f'{path} is unreadable ({e}); refusing to touch this workdir') from None
    if not isinstance(theirs, dict):
      raise UserError(f'{path} holds no config; refusing to touch this workdir')
    # a key added to limijax since that run was made reads as its default there
    diff = defaults.diff_keys(defaults.fill_defaults(theirs), defaults.fill_defaults(mine))
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


def managers(workdir: str, keep_latest: int = 1):
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
# small arrays of a train state took many times as long to save as the same numbers in
# two arrays, on a GPU as long as an epoch's steps (BENCHMARKS.md). So a checkpoint holds a
# tree's leaves packed into one flat array per dtype, in ``jax.tree.leaves`` order, and
# its meta says ``'layout': 'packed'``; the tree's structure comes back from the model's
# config.
PACKED = 'packed'


@jax.jit
def pack(tree) -> dict:
  """``{dtype name: 1-D array}``: the leaves of ``tree`` of that dtype, raveled and
  concatenated in leaf order. Exact (no arithmetic), and one compiled program per tree
  structure, so it works on arrays sharded over several devices or processes too."""
  groups: dict[str, list] = {}
  for leaf in jax.tree.leaves(tree):
    groups.setdefault(jnp.dtype(leaf.dtype).name, []).append(jnp.ravel(leaf))
  return {name: jnp.concatenate(leaves) for name, leaves in groups.items()}


def packed_abstract(template, sharding) -> dict:
  """The shapes :func:`pack` gives for a tree shaped like ``template``, on ``sharding``."""
  sizes: dict[str, int] = {}
  for leaf in jax.tree.leaves(template):
    name = jnp.dtype(leaf.dtype).name
    sizes[name] = sizes.get(name, 0) + math.prod(leaf.shape)
  return {name: jax.ShapeDtypeStruct((n,), jnp.dtype(name), sharding=sharding)
          for name, n in sizes.items()}


def unpack(packed: dict, template, sharding):
  """The tree shaped like ``template`` that :func:`pack` packed, on ``sharding``."""
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


def restore_tree(manager, step: int, item: str, template, sharding, **extra) -> dict:
  """Restore ``item`` (a tree shaped like ``template``, onto ``sharding``) and the
  ``meta`` of checkpoint ``step``; ``extra`` restore args go along."""
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  if meta.get('layout') != PACKED:
    raise UserError(f'{manager.directory}/{step}: a checkpoint of another layout (written '
                    f'by a version before the packed checkpoints); train the run again')
  r = manager.restore(step, args=ocp.args.Composite(
      **{item: ocp.args.StandardRestore(packed_abstract(template, sharding))}, **extra))
  return {**r, item: unpack(r[item], template, sharding), 'meta': meta}


def write_best(workdir: str, params, model_state, meta: dict, step: int = 0,
               manager=None) -> None:
  """Save ``params`` and ``model_state`` as the run's best checkpoint at ``step``, with
  ``meta`` (``epoch``, ``mean``, ``std``, ``val``): the format :func:`load_run` reads.
  ``manager`` is the run's best-checkpoint manager when the caller holds one."""
  best = manager if manager is not None else managers(workdir)[1]
  best.save(step, args=ocp.args.Composite(
      model=ocp.args.StandardSave(pack({'params': params, 'model_state': model_state})),
      meta=ocp.args.JsonSave({**meta, 'layout': PACKED})), force=True)
  best.wait_until_finished()


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
  config.update(defaults.fill_defaults(stored))
  return defaults.checked(config)


def load_run(workdir: str) -> TrainedRun:
  """The best checkpoint of a run, with its model and normalisation."""
  config = load_config(workdir)
  model = model_lib.from_config(config)
  best_dir = os.path.join(workdir, 'checkpoints', 'best')
  if not has_checkpoint(workdir, ('best',)):  # before a manager creates folders
    raise UserError(f'{best_dir} holds no checkpoint yet')
  _, best = managers(workdir)
  step = best.latest_step()
  # Onto this process's first device, whatever devices (and processes) trained the run.
  here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  params, model_state = split_variables(model_lib.variable_shapes(model))
  r = restore_tree(best, step, 'model', {'params': params, 'model_state': model_state},
                    here)
  meta = r['meta']
  params, model_state = r['model']['params'], r['model']['model_state']
  return TrainedRun(config, model, params, model_state, meta['mean'], meta['std'],
                    meta['epoch'])
