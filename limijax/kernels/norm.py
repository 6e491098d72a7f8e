"""GroupNorm as XLA:CPU runs it fast: the spatial sums read as rows of 16 values
(:func:`spatial_sums`) and the per-channel values broadcast over H and W by
:func:`broadcast_hw`, whose gradient sums over H first on a CPU. Values and gradients equal
``flax.linen.GroupNorm``'s to float rounding (tests/test_model.py)."""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from limijax.architecture import GN_EPS
from limijax.kernels import valid as valid_lib



def _lanes(c: int, size: int) -> int:
  """The row length :func:`spatial_sums` reduces over: 16 (one AVX-512 vector of float32)
  when ``c`` divides 16, ``c`` itself when it is a multiple of 16 or does not divide 16,
  or when ``size`` (= h * w * c) is not a multiple of 16."""
  return 16 if 16 % c == 0 and size % 16 == 0 else c


def spatial_sums(x: jax.Array) -> jax.Array:
  """``x.sum(axis=(1, 2))`` of NHWC ``x``: (N, C).

  XLA:CPU reduces an NHWC tensor over H and W with a loop whose innermost dimension is
  the few channels (4 to 32 in Limi-Net), which it barely vectorises. Read as rows of 16
  values (channel ``i % C`` at position ``i``), the same sum is a reduction over rows of
  whole vectors, several times faster (BENCHMARKS.md). The order of the additions differs, so
  the sums differ from a plain ``sum`` in the last bits."""
  n, h, w, c = x.shape
  lanes = _lanes(c, h * w * c)
  rows = lax.reduce_sum(x.reshape(n, h * w * c // lanes, lanes), (1,))
  return lax.reduce_sum(rows.reshape(n, lanes // c, c), (1,))


_H_FIRST_BACKENDS = ('cpu',)  # where broadcast_hw's gradient sums over H first


def broadcast_hw(v: jax.Array, shape: Sequence[int]) -> jax.Array:
  """``v`` ((N, C), one row per image, or (C,) for all) broadcast over H and W of the NHWC
  ``shape``: the values of ``v[:, None, None, :]`` (or ``v``) broadcast; only the
  gradient is written differently. Autodiff's gradient of a broadcast is one sum over
  (H, W) (and N), which XLA:CPU runs as a windowed reduction on one thread with the few
  channels innermost (mostly GroupNorm's and ECA's gradients: a fifth of a training step's
  time on a 2-core CPU). On a CPU the gradient here sums over H first, rows of W x C
  contiguous values, then over W (and N), the two sums kept apart by an optimisation
  barrier so that XLA does not fold them back into one: half the time (BENCHMARKS.md,
  2026-11-28). Other backends keep autodiff's one sum. The additions run in another
  order, so gradients differ from autodiff's in the last bits."""
  return _broadcast_hw(v, tuple(shape), v.ndim == 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _broadcast_hw(v, shape, per_image):
  return jnp.broadcast_to(v[:, None, None, :] if per_image else v, shape)


def _broadcast_hw_fwd(v, shape, per_image):
  return _broadcast_hw(v, shape, per_image), None


def _broadcast_hw_bwd(shape, per_image, _, g):
  if jax.default_backend() not in _H_FIRST_BACKENDS:
    return (jnp.sum(g, axis=(1, 2) if per_image else (0, 1, 2)),)
  rows = lax.optimization_barrier(jnp.sum(g, axis=1))  # (N, W, C)
  return (jnp.sum(rows, axis=1 if per_image else (0, 1)),)


_broadcast_hw.defvjp(_broadcast_hw_fwd, _broadcast_hw_bwd)


class GroupNorm(nn.Module):
  """GroupNorm over (H, W, channels of a group) of NHWC input with
  ``flax.linen.GroupNorm``'s parameters (``scale`` ones, ``bias`` zeros) and arithmetic
  (statistics as E[x], E[x^2] - E[x]^2 clipped at 0; ``(x - mean) * (rsqrt(var + eps) *
  scale) + bias``), its sums over H and W by :func:`spatial_sums` and its per-channel
  values broadcast by :func:`broadcast_hw`. (A hand-written gradient with the same sums
  made the training step slower on a CPU: XLA then copied the gradients into other
  layouts.)

  With ``valid`` (:mod:`limijax.kernels.valid`) the input must be 0 beyond each image's
  valid part (every convolution's output is made so): the sums then need no mask, only
  the count of valid values; the output is 0 beyond the valid part too."""
  num_groups: int
  epsilon: float = GN_EPS

  @nn.compact
  def __call__(self, x, valid: valid_lib.Valid | None = None):
    n, h, w, c = x.shape
    g = self.num_groups
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    mask = valid_lib.mask_of(x, valid)
    if mask is None:
      count = h * w * (c // g)
    else:  # statistics over the valid part alone (x is 0 beyond it), and 0 beyond it
      rows, cols = valid_lib.size_of(x, valid)
      count = (rows * cols * (c // g)).astype(x.dtype)[:, None]
    mean = lax.reduce_sum(spatial_sums(x).reshape(n, g, c // g), (2,)) / count
    mean2 = lax.reduce_sum(spatial_sums(lax.square(x)).reshape(n, g, c // g), (2,)) / count
    var = jnp.maximum(0.0, mean2 - lax.square(mean))
    mean = jnp.repeat(mean, c // g, axis=-1)  # (N, C)
    var = jnp.repeat(var, c // g, axis=-1)
    y = ((x - broadcast_hw(mean, x.shape))
         * broadcast_hw(lax.rsqrt(var + self.epsilon) * scale, x.shape)
         + broadcast_hw(bias, x.shape))
    return y if mask is None else y * mask


def num_groups(channels: int) -> int:
  """Limi-Net's GroupNorm groups for ``channels``: ``min(4, C // 2)``, at least one."""
  return min(4, max(1, channels // 2))


def gn(channels: int, name: str | None = None) -> GroupNorm:
  """Limi-Net's GroupNorm of ``channels`` (:func:`num_groups`)."""
  return GroupNorm(num_groups=num_groups(channels), name=name)
