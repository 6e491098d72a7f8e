"""Weights between the flax model and its PyTorch twin (:mod:`limijax.torch_twin`), both
ways, bit for bit.

The name rule: a flax path ``params/a/b/leaf`` is the ``state_dict`` key ``a.b.<leaf'>``
with ``kernel`` and ``scale`` -> ``weight`` and ``bias`` -> ``bias``; the BatchNorm
statistics ``batch_stats/a/b/mean`` and ``var`` are ``a.b.running_mean`` and
``running_var`` (plus torch's ``num_batches_tracked``, which flax does not keep: it is
written as 0 and ignored on the way back; the twin's BatchNorm uses a fixed momentum, so
the counter changes nothing).

The layout rule, one for every convolution: a flax kernel ``(kh, kw, I, O)`` (HWIO) is a
torch weight ``(O, I, kh, kw)`` (OIHW), ``weight = kernel.transpose(3, 2, 0, 1)``. A
depthwise kernel, stored by flax as ``(kh, kw, 1, C)``, thereby becomes torch's grouped
``(C, 1, kh, kw)``; so does the depthwise stride-2 transposed kernel of HUF, which is
``ConvTranspose2d``'s ``(in, out / groups, kh, kw) = (C, 1, 4, 4)`` *without* a spatial
flip, because :func:`limijax.kernels.depthwise.depthwise_conv_transpose2x` stores the kernel in
PyTorch's orientation already (its ``grouped`` form flips it for the dilated-input
convolution it runs). ECA's 1-D kernel ``(k,)`` is the ``Conv1d`` weight ``(1, 1, k)``.
GroupNorm and BatchNorm scales and biases are 1-D in both.

Only transposes and reshapes: no arithmetic, so a round trip returns the same bits.
numpy-only except :func:`flax_to_state_dict` / :func:`state_dict_to_flax` (torch) and
:func:`flax_template` (JAX, to know the shapes a config's flax model has).
"""

from __future__ import annotations

import collections
from typing import Any, Iterator, Mapping

import numpy as np

from limijax.errors import UserError

_LEAF = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
         ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
         ('batch_stats', 'var'): 'running_var'}
NUM_BATCHES = 'num_batches_tracked'


class StateDictMismatch(UserError):
  """A state_dict whose keys or shapes are not those of the model config."""


# --------------------------------------------------------------------------- names, layouts
def _walk(tree: Mapping, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
  for k in sorted(tree):
    v = tree[k]
    if isinstance(v, Mapping):
      yield from _walk(v, prefix + (str(k),))
    else:
      yield prefix + (str(k),), v


def flax_leaves(params: Mapping, model_state: Mapping | None = None):
  """``(collection, path, array)`` for every leaf: ``params`` first, then the other
  collections (``batch_stats``) of ``model_state``."""
  out = [('params', path, leaf) for path, leaf in _walk(params)]
  for collection in sorted(model_state or {}):
    out += [(collection, path, leaf) for path, leaf in _walk(model_state[collection])]
  return out


def torch_key(collection: str, path: tuple) -> str:
  """The ``state_dict`` key of the flax leaf ``collection/path``."""
  leaf = _LEAF.get((collection, path[-1]))
  if leaf is None:
    raise ValueError(f'no PyTorch name for flax leaf {collection}/{"/".join(path)}')
  return '.'.join(path[:-1] + (leaf,))


def to_torch_layout(path: tuple, array) -> np.ndarray:
  a = np.asarray(array)
  if path[-1] == 'kernel' and a.ndim == 4:  # HWIO -> OIHW (depthwise and transposed too)
    return a.transpose(3, 2, 0, 1).copy(order='C')
  if path[-1] == 'kernel' and a.ndim == 1:  # ECA's 1-D kernel -> Conv1d (1, 1, k)
    return a.reshape(1, 1, -1).copy()
  return a.copy()


def torch_shape(path: tuple, shape: tuple) -> tuple:
  if path[-1] == 'kernel' and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if path[-1] == 'kernel' and len(shape) == 1:
    return (1, 1, shape[0])
  return tuple(shape)


def from_torch_layout(path: tuple, array: np.ndarray) -> np.ndarray:
  if path[-1] == 'kernel' and array.ndim == 4:  # OIHW -> HWIO
    return array.transpose(2, 3, 1, 0).copy(order='C')
  if path[-1] == 'kernel' and array.ndim == 3:
    return array.reshape(-1).copy()
  return array.copy()


# --------------------------------------------------------------------------- flax -> torch
def flax_to_arrays(params: Mapping, model_state: Mapping | None = None
                   ) -> 'collections.OrderedDict[str, np.ndarray]':
  """The twin's ``state_dict`` as numpy arrays (torch layout), every flax leaf once; each
  BatchNorm gets ``num_batches_tracked`` = 0 (int64)."""
  out = collections.OrderedDict()
  for collection, path, leaf in flax_leaves(params, model_state):
    key = torch_key(collection, path)
    out[key] = to_torch_layout(path, leaf)
    if collection == 'batch_stats' and path[-1] == 'var':
      out['.'.join(path[:-1] + (NUM_BATCHES,))] = np.zeros((), np.int64)
  return out


def flax_to_state_dict(params: Mapping, model_state: Mapping | None = None,
                       config: Any = None) -> 'collections.OrderedDict':
  """The PyTorch ``state_dict`` of flax ``params`` (+ ``model_state``'s ``batch_stats``).

  With ``config`` (a run config or an exported model-config dict) the keys are checked
  against the twin built from it and put in the twin's order.
  """
  import torch  # pylint: disable=g-import-not-at-top
  arrays = flax_to_arrays(params, model_state)
  sd = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in arrays.items())
  if config is None:
    return sd
  from limijax import torch_twin  # pylint: disable=g-import-not-at-top
  ref = torch_twin.build(config).state_dict()
  check_keys({k: tuple(v.shape) for k, v in sd.items()},
             {k: tuple(v.shape) for k, v in ref.items()}, torch_twin.model_config(config))
  return collections.OrderedDict((k, sd[k]) for k in ref)


# --------------------------------------------------------------------------- torch -> flax
def _describe(model_cfg: Mapping | None) -> str:
  if not model_cfg:
    return 'the model'
  keys = ('stem', 'block', 'upsampler', 'head', 'channels')
  return 'the model (' + ', '.join(f'{k}={model_cfg[k]}' for k in keys if k in model_cfg) + ')'


def _listed(names, limit: int = 6) -> str:
  names = list(names)
  shown = ', '.join(names[:limit])
  return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def check_keys(got: Mapping[str, tuple], expected: Mapping[str, tuple],
               model_cfg: Mapping | None = None) -> None:
  """Raise :class:`StateDictMismatch` naming every missing, unexpected and wrongly shaped
  key (``num_batches_tracked`` may be absent)."""
  missing = [k for k in expected if k not in got and not k.endswith('.' + NUM_BATCHES)]
  unexpected = [k for k in got if k not in expected]
  wrong = [f'{k} {tuple(got[k])} (expected {tuple(expected[k])})' for k in expected
           if k in got and tuple(got[k]) != tuple(expected[k])]
  problems = []
  if missing:
    problems.append(f'{len(missing)} missing key(s): {_listed(missing)}')
  if unexpected:
    problems.append(f'{len(unexpected)} unexpected key(s): {_listed(unexpected)}')
  if wrong:
    problems.append(f'{len(wrong)} wrongly shaped: {_listed(wrong, 4)}')
  if problems:
    raise StateDictMismatch(f'the state_dict does not fit {_describe(model_cfg)}: '
                            + '; '.join(problems))


def flax_template(config: Any):
  """``(params, model_state)`` of ``jax.ShapeDtypeStruct`` for the flax model of a run
  config (or an exported model-config dict)."""
  from limijax import model as model_lib  # pylint: disable=g-import-not-at-top
  m = _model_config(config)
  variables = model_lib.variable_shapes(model_lib.from_model_config(m))
  return variables['params'], {k: v for k, v in variables.items() if k != 'params'}


def _model_config(config: Any) -> dict:
  # The keys of torch_twin.model_config, without importing torch.
  if 'model' in config:
    m = dict(config['model'].items())
    m.setdefault('in_channels', config['data']['in_channels'] if 'data' in config else 1)
    return m
  m = dict(config.items())
  m.setdefault('in_channels', 1)
  return m


def _set(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def arrays_to_flax(arrays: Mapping[str, Any], params_template: Mapping,
                   state_template: Mapping | None = None, model_cfg: Mapping | None = None):
  """``(params, model_state)`` (numpy float32) from torch-layout arrays by key, in the
  structure of the templates (anything with ``.shape``); keys and shapes are checked
  first, every problem named."""
  leaves = flax_leaves(params_template, state_template)
  expected = collections.OrderedDict()
  for collection, path, leaf in leaves:
    expected[torch_key(collection, path)] = torch_shape(path, tuple(leaf.shape))
    if collection == 'batch_stats' and path[-1] == 'var':
      expected['.'.join(path[:-1] + (NUM_BATCHES,))] = ()
  got = {k: tuple(np.shape(v)) for k, v in arrays.items()}
  check_keys(got, expected, model_cfg)
  params, state = {}, {}
  for collection, path, _ in leaves:
    key = torch_key(collection, path)
    a = np.asarray(arrays[key])
    if not np.issubdtype(a.dtype, np.floating):
      raise StateDictMismatch(f'state_dict key {key} holds {a.dtype} values, not floats')
    a = from_torch_layout(path, a.astype(np.float32, copy=False))
    if collection == 'params':
      _set(params, path, a)
    else:
      _set(state.setdefault(collection, {}), path, a)
  return params, state


def state_dict_to_flax(state_dict: Mapping, config: Any):
  """``(params, model_state)`` of the flax model of ``config`` from a PyTorch
  ``state_dict`` (tensors or arrays); raises :class:`StateDictMismatch` naming every
  missing, unexpected or wrongly shaped key."""
  arrays = {k: _numpy(v) for k, v in state_dict.items()}
  params_t, state_t = flax_template(config)
  return arrays_to_flax(arrays, params_t, state_t, _model_config(config))


def _numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor
    return value.detach().cpu().numpy()
  return np.asarray(value)


# --------------------------------------------------------------------------- flat (npz) form
def flatten(params: Mapping, model_state: Mapping | None = None) -> dict[str, np.ndarray]:
  """``{'params/ses/conv/kernel': array, 'batch_stats/...': array, ...}`` (flax layout)."""
  return {'/'.join((c,) + path): np.asarray(leaf)
          for c, path, leaf in flax_leaves(params, model_state)}


def unflatten(flat: Mapping[str, Any]):
  """The inverse of :func:`flatten`: ``(params, model_state)``."""
  params, state = {}, {}
  for key, value in flat.items():
    collection, *path = key.split('/')
    if collection == 'params':
      _set(params, tuple(path), np.asarray(value))
    else:
      _set(state.setdefault(collection, {}), tuple(path), np.asarray(value))
  return params, state
