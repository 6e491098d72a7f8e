"""Images of several sizes in one batch: each image zero-padded at the bottom and right
into a shared shape, and the model told each image's own size (``valid_hw``), so that every
layer computes on each image's valid part what it computes on the image alone
(tests/test_eval_batched.py). Evaluation then compiles a handful of shapes, not one per
image size (:func:`limijax.evaluation.evaluate_source`).

A :class:`Valid` travels with the features through the blocks (their ``valid`` argument;
None when every image fills the batch's shape, and then nothing here runs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np


class Valid:
  """``valid_hw`` ((N, 2) int32: each image's height and width at the input resolution,
  multiples of 16), the input's padded height, and one mask per resolution: those given
  (:func:`valid_masks`, made on the host), else made here from ``valid_hw``. XLA folds a
  mask made here into every fusion that reads it, index arithmetic and all; masks given
  cost less (BENCHMARKS.md, 2026-11-27, late night)."""

  def __init__(self, valid_hw: jax.Array, full_h: int, masks=None):
    self.valid_hw, self.full_h, self.masks = valid_hw, full_h, {}
    for m in masks or ():
      self.masks[m.shape[1:3]] = m

  def size(self, h: int) -> tuple[jax.Array, jax.Array]:
    """``(rows, cols)``, each (N,) int32: the valid part at the resolution of height ``h``."""
    shift = (self.full_h // h).bit_length() - 1  # resolutions differ by powers of 2
    sizes = lax.shift_right_logical(self.valid_hw, jnp.int32(shift))
    return sizes[:, 0], sizes[:, 1]

  def mask(self, h: int, w: int, dtype) -> jax.Array:
    """(N, h, w, 1): 1 inside each image's valid part, 0 beyond."""
    if (h, w) not in self.masks:
      rows, cols = self.size(h)
      inside = ((lax.broadcasted_iota(jnp.int32, (1, h, 1, 1), 1) < rows[:, None, None, None])
                & (lax.broadcasted_iota(jnp.int32, (1, 1, w, 1), 2)
                   < cols[:, None, None, None]))
      self.masks[(h, w)] = inside.astype(dtype)
    return self.masks[(h, w)].astype(dtype)


def valid_masks(valid_hw, height: int, width: int) -> tuple[np.ndarray, ...]:
  """The masks of :class:`Valid` for a batch of shape (N, ``height``, ``width``, C), made on
  the host: float32 (N, height / s, width / s, 1) for the resolutions s = 1, 2, 4, 8, 16:
  1 inside each image's valid part and 0 beyond."""
  valid_hw = np.asarray(valid_hw, np.int64)
  out = []
  for s in (1, 2, 4, 8, 16):
    rows = np.arange(height // s)[None, :] < valid_hw[:, :1] // s
    cols = np.arange(width // s)[None, :] < valid_hw[:, 1:] // s
    out.append((rows[:, :, None] & cols[:, None, :]).astype(np.float32)[..., None])
  return tuple(out)


def size_of(x: jax.Array, valid: Valid | None) -> tuple[jax.Array, jax.Array] | None:
  """The valid part of NHWC ``x`` at its own resolution; None without ``valid``."""
  return None if valid is None else valid.size(x.shape[1])


def mask_of(x: jax.Array, valid: Valid | None) -> jax.Array | None:
  """(N, H, W, 1) mask of ``x``'s valid part; None without ``valid``."""
  return None if valid is None else valid.mask(x.shape[1], x.shape[2], x.dtype)


def zero_invalid(x: jax.Array, valid: Valid | None) -> jax.Array:
  """``x`` with 0 beyond each image's valid part (unchanged without ``valid``): what zero
  padding at the valid border needs."""
  m = mask_of(x, valid)
  return x if m is None else x * m


def replicate_valid_edge(x: jax.Array, valid: Valid | None) -> jax.Array:
  """``x`` with the row just past each image's valid part set to its last valid row, and
  likewise the column (unchanged without ``valid``). Bilinear upsampling by PyTorch's rule
  clamps at the border, so it reads one value past the edge; this makes that value the
  edge's own, as at the image's own size."""
  v = size_of(x, valid)
  if v is None:
    return x
  rows, cols = v
  _, h, w, _ = x.shape
  above = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)  # row i holds row i - 1
  x = jnp.where(lax.broadcasted_iota(jnp.int32, (1, h, 1, 1), 1)
                == rows[:, None, None, None], above, x)
  left = jnp.concatenate([x[:, :, :1], x[:, :, :-1]], axis=2)
  return jnp.where(lax.broadcasted_iota(jnp.int32, (1, 1, w, 1), 2)
                   == cols[:, None, None, None], left, x)
