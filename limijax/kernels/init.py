"""A model's random initial values from two draws: :func:`init`.

Flax's own ``model.init(key, x)`` draws each parameter from its own key (a key folded in
per parameter name, then a draw): a program of a few thousand operations, whose first
compilation in a process takes about three times as long as two draws cut into pieces
(BENCHMARKS.md). :func:`init` lets flax create the variables (the random values it draws are
never used, and XLA drops them), then replaces every convolution kernel by the next piece
of one truncated-normal draw and every ECA kernel by the next piece of one normal draw,
in the order the model creates them, with the distributions the modules declare:
He-normal (fan-in, truncated at two standard deviations) for 4-D kernels, a normal of
std ``1 / sqrt(k)`` for the 1-D ECA kernels of length k.
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
import math
import os

import jax
import jax.numpy as jnp
from jax import lax

_TRUNCATED_STD = .87962566103423978  # std of a unit normal truncated to [-2, 2]


def _random_leaves(params: dict) -> list[tuple[tuple, str, float]]:
  """``(path, kind, scale)`` of every random parameter, in creation order (the order of
  the dicts flax built, before any pytree operation sorts their keys)."""
  out = []

  def walk(tree, path):
    for k, v in tree.items():
      if isinstance(v, Mapping):
        walk(v, path + (k,))
      elif k == 'kernel' and v.ndim == 4:  # a convolution: He-normal, fan-in kh * kw * C_in
        out.append((path + (k,), 'truncated',
                    math.sqrt(2.0 / math.prod(v.shape[:-1])) / _TRUNCATED_STD))
      elif k == 'kernel' and v.ndim == 1:  # an ECA kernel of length k: std 1 / sqrt(k)
        out.append((path + (k,), 'normal', 1.0 / math.sqrt(v.shape[0])))

  walk(params, ())
  return out


def one_draw(rng: jax.Array, variables: dict) -> dict:
  """``variables`` (as flax's ``init`` built them, not yet through a pytree operation)
  with every random parameter replaced by its piece of two draws from ``rng``."""
  wanted = _random_leaves(variables['params'])
  shapes = {}
  for path, _, _ in wanted:
    node = variables['params']
    for k in path:
      node = node[k]
    shapes[path] = node.shape
  pieces = {}
  for kind, key in zip(('truncated', 'normal'), jax.random.split(rng)):
    mine = [(p, s) for p, k, s in wanted if k == kind]
    total = sum(math.prod(shapes[p]) for p, _ in mine)
    if kind == 'truncated':
      flat = jax.random.truncated_normal(key, -2.0, 2.0, (total,), jnp.float32)
    else:
      flat = jax.random.normal(key, (total,), jnp.float32)
    start = 0
    for p, scale in mine:
      size = math.prod(shapes[p])
      pieces[p] = lax.slice_in_dim(flat, start, start + size).reshape(shapes[p]) * scale
      start += size

  def fill(tree, path):
    return {k: fill(v, path + (k,)) if isinstance(v, Mapping) else pieces.get(path + (k,), v)
            for k, v in tree.items()}

  return {**variables, 'params': fill(variables['params'], ())}


def init(model, rng: jax.Array, size: int = 32) -> dict:
  """All variables of ``model`` (side heads included) for a (1, size, size, C) input, the
  random ones from two draws (:func:`one_draw`). Flax's ``model.init(key, x)`` gives the
  same variables with the same distributions but other values; training starts from these.

  The draws always run on the host's CPU (:func:`init_device`) and the variables are then
  placed on this process's first device: every backend starts from the CPU's values, and
  a GPU skips compiling (and autotuning the convolutions of) a program it would run once."""
  x = jnp.zeros((1, size, size, model.in_channels), jnp.float32)
  # Inside another trace (jax.eval_shape of the train state) the jit is nested, and only a
  # top-level jit takes compiler options.
  if isinstance(x, jax.core.Tracer) or isinstance(rng, jax.core.Tracer):
    return _jitted_init(model, ())(rng, x)
  cpu = init_device()
  options = tuple((init_compiler_options() or {}).items())
  if cpu is None:
    return _jitted_init(model, options)(rng, x)
  variables = _jitted_init(model, options)(jax.device_put(rng, cpu), jax.device_put(x, cpu))
  return jax.device_put(variables, jax.local_devices()[0])


def init_device():
  """The host CPU device that :func:`init` runs on when JAX's default backend is an
  accelerator; None on a CPU backend (the draws run where everything runs)."""
  if jax.default_backend() == 'cpu':
    return None
  try:
    return jax.local_devices(backend='cpu')[0]
  except RuntimeError:  # no CPU backend in this process: initialise on the accelerator
    return None


def init_compiler_options() -> dict | None:
  """XLA options for compiling the initialisation on a CPU: backend optimisation level 1,
  unless ``XLA_FLAGS`` sets a level. At level 1 the program compiles faster than at the
  default level and gives the same values, bit for bit (tests/test_model.py); level 0
  rounds the normal draws differently."""
  on_cpu = jax.default_backend() == 'cpu' or init_device() is not None
  if not on_cpu or 'xla_backend_optimization_level' in os.environ.get('XLA_FLAGS', ''):
    return None
  return {'xla_backend_optimization_level': 1}


@functools.lru_cache(maxsize=64)
def _jitted_init(model, compiler_options: tuple = ()):
  # jitted: op-by-op initialisation of this many small ops is slower than compiling it;
  # one jitted function per model (modules are hashable) and options ((key, value)
  # pairs), so it is traced once per process
  def draw(rng, x):
    return one_draw(rng, model.init(rng, x, train=True))

  return jax.jit(draw, compiler_options=dict(compiler_options) or None)
