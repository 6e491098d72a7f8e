"""Limi-Net (Light but Mighty, ICIC 2025) in functional flax.linen.

One module per block of the paper, named as the paper names it (Fig. 2-4):

* :class:`SES`  - Stability-Enhanced Stem (Fig. 3a)
* :class:`ECA`  - Efficient Channel Attention (Fig. 3b)
* :class:`LMB`  - Lightweight Multi-branch Bottleneck (Fig. 3c), four of them: 8, 16, 32, 32
* :class:`HUF`  - Hybrid Upsampling Fusion (Fig. 4a)
* :class:`FastUp` (Fig. 4b) and :class:`SegmentHead` (Fig. 4c)
* :class:`LimiNet` - the encoder, the coarse-to-fine decoder, the multi-scale head and
  the C2F side heads.

Tensors are NHWC. ``LimiNet.apply(variables, x, train=True)`` returns
``(final_logits, side_logits)`` where ``side_logits`` holds the four C2F outputs at full
resolution, coarsest (x8) first; ``train=False`` returns the final logits alone and does
not compute the side heads. With ``valid_hw`` (inference) a batch of images of different
sizes, zero-padded into one shape, gives each image what it gives alone
(:meth:`LimiNet.__call__`): evaluation compiles a handful of shapes, not one per size.

Decisions the paper leaves open (also listed in the README's model section):

* Activation: ReLU everywhere (cheap, exports to every runtime).
* Normalisation: GroupNorm with ``min(4, C // 2)`` groups and eps 1e-5 (PyTorch's) after
  every convolution that is not followed by a head or by the residual sum's own norm.
  GroupNorm, not BatchNorm, also beyond the stem: the paper's reason for it in SES
  (small batches) holds for the whole network, and it makes training and inference
  compute the same function. The ``dsconv_bn`` ablation stem is the only BatchNorm.
* SES (3.2: "a depth-wise separable convolution, supplemented by ECA, is then used ...
  while increasing the number of channels to 8"): a standard 3x3 conv 1 -> 4
  (``stem_channels``) + GN + ReLU, then depthwise 3x3 + pointwise 4 -> 8 (``channels[0]``)
  + GN + ReLU, then ECA.
* ECA: kernel ``k = t if t odd else t + 1`` with ``t = int(|log2(C) / 2 + 1 / 2|)``
  (ECA-Net's gamma = 2, b = 1; k = 3 for 8, 16 and 32 channels), zero padding, no bias.
* LMB: 1x1 reduction to ``C_out / 2`` (bottleneck ratio 0.5) + GN + ReLU; two parallel
  depthwise-separable branches with kernels 3 and 7 (receptive fields 3 and 7), each
  with stride 2 (the downsampling sits in the branches, so the 1x1 reduction runs at
  the input resolution and the branches produce half-size maps) + GN + ReLU;
  concatenation; 1x1 fusion to ``C_out`` + GN; ECA; a residual shortcut (2x2 average
  pool, plus a 1x1 projection when channels change); ReLU after the sum.
* Encoder resolutions: SES at 1/1, LMB at 1/2, 1/4, 1/8, 1/16, so an input side must be
  a multiple of 16.
* HUF: the deeper feature is upsampled x2 twice - DSTC (depthwise 4x4 stride-2
  transposed conv + pointwise to ``C_out``) and bilinear (a 1x1 projection at the low
  resolution when channels change; 1x1 conv and bilinear interpolation commute) - the
  two streams are *added*, concatenated with the LMB/SES skip of the same scale, and
  fused by a 1x1 conv (2 ``C_out`` -> ``C_out``) + GN + ReLU.
  HUF outputs: 32 @ 1/8, 16 @ 1/4, 8 @ 1/2, 8 @ 1/1.
* FastUp: bilinear x8 / x4 / x2, then depthwise 3x3 + pointwise to 4 channels + GN + ReLU
  (the order of Fig. 4b).
* Multi-scale head: the three FastUp outputs (4 channels each) concatenated with the
  final HUF feature (8 channels) -> SegmentHead.
* SegmentHead: depthwise 3x3 + pointwise to 8 + GN + ReLU, then a 1x1 conv to one logit
  (with bias). C2F side heads (3.4: "outputs from each HUF module are taken into
  independent segment heads", Fig. 4c): a SegmentHead of its own on each FastUp output
  and on the final HUF feature, training only (not computed, and not counted, at
  inference).
* Initialisation: He-normal (fan-in; truncated at two standard deviations, as flax's) for
  convolutions, a normal of std ``1 / sqrt(k)`` for the ECA kernels, zeros for biases,
  ones/zeros for norms; the final logit biases start at ``-log((1 - 0.01) / 0.01)`` so
  that the first predictions are background (targets are a tiny share of pixels).
  :func:`init` draws the random values once, as one vector per distribution, and cuts it
  into the kernels in the order the model creates them.
* Input channels: 1 (grey); NUDT-SIRST's RGB files carry a grey image and are read as one.

Ablations (paper Table 2): ``stem='dsconv_bn'`` (w/o SES: depthwise-separable conv
1 -> 8 + BatchNorm + ReLU, the stem's only normalisation; everything after it keeps GroupNorm), ``block='residual'`` (w/o LMB: plain residual blocks of two
3x3 convolutions), ``upsampler='bilinear'`` (w/o HUF: bilinear x2 then a
depthwise-separable conv, no DSTC stream) and ``head='fpn'`` (w/o C2F: the same
multi-scale FPN-style head, no label-smoothed side supervision).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from limijax import depthwise
from limijax.errors import ConfigError, UserError

STEMS = ('ses', 'dsconv_bn')
BLOCKS = ('lmb', 'residual')
UPSAMPLERS = ('huf', 'bilinear')
HEADS = ('c2f', 'fpn')
STRIDE = 16  # total downsampling of the encoder: input sides must be multiples of it
GN_EPS = 1e-5  # PyTorch's GroupNorm default, so exported weights compute the same thing
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)

_TRUNCATED_STD = .87962566103423978  # std of a unit normal truncated to [-2, 2]


class _Draws:
  """The random values of one :func:`init`: one truncated-normal and one normal vector,
  drawn once and cut into the kernels in the order the model creates them.

  One draw per parameter (flax's own ``init``: a key folded in per parameter name, then a
  draw) makes a program of a few thousand operations: the first initialisation in a
  process took 8.7 s on a 2-core CPU (backend optimisation level 1, tracing included),
  against 2.7 s with two draws cut into pieces. While the model creates its variables,
  each random initialiser hands back a placeholder and records what it wants;
  :meth:`fill` then draws once and puts each piece where its placeholder is."""

  def __init__(self):
    self.wanted = []  # (placeholder, kind, scale)

  def placeholder(self, kind: str, shape, scale: float) -> jax.Array:
    value = jnp.zeros(shape, jnp.float32)
    self.wanted.append((value, kind, scale))
    return value

  def fill(self, rng: jax.Array, variables: dict) -> dict:
    pieces = {}
    for kind, key in zip(('truncated', 'normal'), jax.random.split(rng)):
      wanted = [(v, scale) for v, k, scale in self.wanted if k == kind]
      total = sum(v.size for v, _ in wanted)
      if kind == 'truncated':
        flat = jax.random.truncated_normal(key, -2.0, 2.0, (total,), jnp.float32)
      else:
        flat = jax.random.normal(key, (total,), jnp.float32)
      start = 0
      for v, scale in wanted:
        piece = lax.slice_in_dim(flat, start, start + v.size).reshape(v.shape)
        pieces[id(v)] = piece * scale
        start += v.size
    filled = jax.tree.map(lambda leaf: pieces.pop(id(leaf), leaf), variables)
    if pieces or len({id(v) for v, _, _ in self.wanted}) != len(self.wanted):
      # a placeholder missing from the variables, or two the same: never leave zeros
      raise RuntimeError('the random initial values could not all be placed')
    return filled


_INIT_DRAWS = contextvars.ContextVar('limijax_init_draws', default=None)


def _fan_in(shape) -> int:
  """A convolution kernel's (kh, kw, C_in, C_out) fan-in: kh * kw * C_in (flax's)."""
  return math.prod(shape[:-1])


def conv_init(key, shape, dtype=jnp.float32):
  """He-normal (fan-in): a normal truncated to two standard deviations, scaled to the
  variance 2 / fan-in (flax's ``he_normal``). Inside :func:`init` the values are the
  next piece of its one truncated-normal draw (float32); elsewhere (flax's
  ``Module.init``) flax's ``he_normal`` draws them from ``key``."""
  draws = _INIT_DRAWS.get()
  if draws is None:
    return nn.initializers.he_normal()(key, shape, dtype)
  return draws.placeholder('truncated', shape, math.sqrt(2.0 / _fan_in(shape)) / _TRUNCATED_STD)


def normal_init(stddev: float):
  """A normal with standard deviation ``stddev`` (flax's ``normal``); inside :func:`init`
  the next piece of its one normal draw (float32)."""
  def init_fn(key, shape, dtype=jnp.float32):
    draws = _INIT_DRAWS.get()
    if draws is None:
      return nn.initializers.normal(stddev)(key, shape, dtype)
    return draws.placeholder('normal', shape, stddev)
  return init_fn


class InputShapeError(UserError, ValueError):
  """The input is not (N, H, W, C) with H, W multiples of 16 and the expected C."""


def _lanes(c: int, size: int) -> int:
  """The row length :func:`spatial_sums` reduces over: 16 (one AVX-512 vector of float32)
  when ``c`` divides 16, ``c`` itself when it is a multiple of 16 or does not divide 16,
  or when ``size`` (= h * w * c) is not a multiple of 16."""
  return 16 if 16 % c == 0 and size % 16 == 0 else c


def spatial_sums(x: jax.Array) -> jax.Array:
  """``x.sum(axis=(1, 2))`` of NHWC ``x``: (N, C).

  XLA:CPU reduces an NHWC tensor over H and W with a loop whose innermost dimension is
  the few channels (4 to 32 in Limi-Net), which it barely vectorises: the GroupNorm
  statistics of a (16, 256, 256, 8) tensor took 32 ms on a 2-core CPU. Read as rows of 16
  values (channel ``i % C`` at position ``i``), the same sum is a reduction over rows of
  whole vectors: 2.8 ms. The order of the additions differs, so the sums differ from a
  plain ``sum`` in the last bits."""
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
  channels innermost: such reductions, mostly GroupNorm's and ECA's gradients, took 179
  of the 874 ms of operations of a training step (batch 10, 256x256) on a 2-core CPU.
  On a CPU the gradient here sums over H first, rows of W x C contiguous values, then
  over W (and N), the two sums kept apart by an optimisation barrier so that XLA does
  not fold them back into one: 85 ms (BENCHMARKS.md, 2026-11-28). Other backends keep
  autodiff's one sum. The additions run in another order, so gradients differ from
  autodiff's in the last bits."""
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


# The valid region of a batch padded beyond its images' own sizes (evaluation in shared
# shapes, :func:`limijax.evaluation.evaluate_source`), while :meth:`LimiNet.__call__` runs with
# ``valid_hw``: a :class:`_Valid`; None otherwise.
_VALID = contextvars.ContextVar('limijax_valid', default=None)


class _Valid:
  """``valid_hw`` ((N, 2) int32: each image's height and width at the input resolution,
  multiples of 16), the input's padded height, and one mask per resolution: those given
  (:func:`valid_masks`, made on the host), else made here from ``valid_hw``. XLA folds a
  mask made here into every fusion that reads it, index arithmetic and all: on a 2-core
  CPU, at batch 1 and 288x288, the model took 1.2-1.5x its time without ``valid_hw``
  with masks made here, 1.2-1.3x with masks given (BENCHMARKS.md, 2026-11-27, late night)."""

  def __init__(self, valid_hw: jax.Array, full_h: int, masks=None):
    self.valid_hw, self.full_h, self.masks = valid_hw, full_h, {}
    for m in masks or ():
      self.masks[m.shape[1:3]] = m

  def size(self, h: int) -> tuple[jax.Array, jax.Array]:
    shift = (self.full_h // h).bit_length() - 1  # resolutions differ by powers of 2
    sizes = lax.shift_right_logical(self.valid_hw, jnp.int32(shift))
    return sizes[:, 0], sizes[:, 1]

  def mask(self, h: int, w: int, dtype) -> jax.Array:
    if (h, w) not in self.masks:
      rows, cols = self.size(h)
      inside = ((lax.broadcasted_iota(jnp.int32, (1, h, 1, 1), 1) < rows[:, None, None, None])
                & (lax.broadcasted_iota(jnp.int32, (1, 1, w, 1), 2)
                   < cols[:, None, None, None]))
      self.masks[(h, w)] = inside.astype(dtype)
    return self.masks[(h, w)].astype(dtype)


def valid_masks(valid_hw, height: int, width: int) -> tuple[np.ndarray, ...]:
  """The masks of :class:`LimiNet`'s ``valid_masks`` for a batch of shape (N, ``height``,
  ``width``, C), made on the host: float32 (N, height / s, width / s, 1) for the
  resolutions s = 1, 2, 4, 8, 16: 1 inside each image's valid part and 0 beyond."""
  valid_hw = np.asarray(valid_hw, np.int64)
  out = []
  for s in (1, 2, 4, 8, 16):
    rows = np.arange(height // s)[None, :] < valid_hw[:, :1] // s
    cols = np.arange(width // s)[None, :] < valid_hw[:, 1:] // s
    out.append((rows[:, :, None] & cols[:, None, :]).astype(np.float32)[..., None])
  return tuple(out)


def valid_size(x: jax.Array) -> tuple[jax.Array, jax.Array] | None:
  """``(rows, cols)``, each (N,) int32: the valid part of NHWC ``x`` at its own
  resolution while :meth:`LimiNet.__call__` runs with ``valid_hw``; None otherwise."""
  v = _VALID.get()
  return None if v is None else v.size(x.shape[1])


def valid_mask(x: jax.Array) -> jax.Array | None:
  """(N, H, W, 1): 1 inside each image's valid part of ``x``, 0 beyond; None outside a
  call with ``valid_hw``."""
  v = _VALID.get()
  return None if v is None else v.mask(x.shape[1], x.shape[2], x.dtype)


def zero_invalid(x: jax.Array) -> jax.Array:
  """``x`` with 0 beyond each image's valid part (unchanged outside a call with
  ``valid_hw``): what zero padding at the valid border needs."""
  m = valid_mask(x)
  return x if m is None else x * m


def replicate_valid_edge(x: jax.Array) -> jax.Array:
  """``x`` with the row just past each image's valid part set to its last valid row, and
  likewise the column (unchanged outside a call with ``valid_hw``). Bilinear upsampling
  by PyTorch's rule clamps at the border, so it reads one value past the edge; this makes
  that value the edge's own, as at the image's own size."""
  v = valid_size(x)
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


class GroupNorm(nn.Module):
  """GroupNorm over (H, W, channels of a group) of NHWC input with
  ``flax.linen.GroupNorm``'s parameters (``scale`` ones, ``bias`` zeros) and arithmetic
  (statistics as E[x], E[x^2] - E[x]^2 clipped at 0; ``(x - mean) * (rsqrt(var + eps) *
  scale) + bias``). The sums over H and W are :func:`spatial_sums` (5-10x faster on a
  CPU than flax's reduction), so values and gradients equal flax's to float rounding
  (tests/test_model.py); written out also because the general module takes about a third
  of the time of tracing the model. (A hand-written gradient with the same sums made the
  training step slower on a CPU, 978 against 779 ms: XLA then copied the gradients into
  other layouts.) The per-channel mean, scale and bias reach the image through
  :func:`broadcast_hw`, whose gradient XLA:CPU sums faster than autodiff's.

  In a call with ``valid_hw`` the input must be 0 beyond each image's valid part (every
  convolution's output is made so, :func:`zero_invalid`): the sums then need no mask
  (multiplying by one inside the rows-of-16 reduction made it several times slower),
  only the count of valid values; the output is 0 beyond the valid part too."""
  num_groups: int
  epsilon: float = GN_EPS

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    g = self.num_groups
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    mask = valid_mask(x)
    if mask is None:
      count = h * w * (c // g)
    else:  # statistics over the valid part alone (x is 0 beyond it), and 0 beyond it
      rows, cols = valid_size(x)
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


def gn(channels: int, name: str | None = None) -> GroupNorm:
  return GroupNorm(num_groups=min(4, max(1, channels // 2)), name=name)


def _upsample_axis(x: jax.Array, factor: int, axis: int) -> jax.Array:
  """Bilinear x``factor`` along one axis as a fixed two-tap stencil per output phase.

  Output ``o = factor * m + r`` samples the input at ``m + t_r`` with
  ``t_r = (r + 0.5) / factor - 0.5`` (half-pixel centres); edge replication reproduces
  PyTorch's clamping at the borders. Cheaper than a dense resize matrix and exact.
  """
  n = x.shape[axis]
  xp = jnp.concatenate([lax.slice_in_dim(x, 0, 1, axis=axis), x,
                        lax.slice_in_dim(x, n - 1, n, axis=axis)], axis=axis)
  phases = []
  for r in range(factor):
    t = (r + 0.5) / factor - 0.5
    lo = math.floor(t)  # -1 or 0
    frac = t - lo
    a = lax.slice_in_dim(xp, 1 + lo, 1 + lo + n, axis=axis)
    b = lax.slice_in_dim(xp, 2 + lo, 2 + lo + n, axis=axis)
    phases.append(a * (1.0 - frac) + b * frac)
  out = jnp.stack(phases, axis=axis + 1)
  shape = list(x.shape)
  shape[axis] = n * factor
  return out.reshape(shape)


def upsample_bilinear(x: jax.Array, factor: int) -> jax.Array:
  """Bilinear x``factor`` of NHWC ``x`` (= torch ``interpolate(align_corners=False)``)."""
  if factor == 1:
    return x
  return _upsample_axis(_upsample_axis(x, factor, 1), factor, 2)


def avg_pool2(x: jax.Array) -> jax.Array:
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class DepthwiseConv(nn.Module):
  """Depthwise k x k convolution (no bias); see :mod:`limijax.depthwise` for ``impl``."""
  kernel_size: int = 3
  stride: int = 1
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', conv_init, (k, k, 1, x.shape[-1]), jnp.float32)
    return depthwise.depthwise_conv(x, kernel, stride=self.stride, impl=self.impl)


class DepthwiseConvTranspose(nn.Module):
  """Depthwise 4x4 stride-2 transposed convolution (no bias): doubles H and W."""
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', conv_init, (4, 4, 1, x.shape[-1]), jnp.float32)
    return depthwise.depthwise_conv_transpose2x(x, kernel, impl=self.impl)


class OneChannelConv(nn.Module):
  """3x3 convolution (no bias) of a one-channel input; the parameters of the equivalent
  ``nn.Conv`` (``kernel`` of shape (3, 3, 1, features)), computed by
  :func:`limijax.depthwise.conv_one_channel`."""
  features: int
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', conv_init, (3, 3, 1, self.features), jnp.float32)
    return zero_invalid(depthwise.conv_one_channel(x, kernel, impl=self.impl))


_POINTWISE_FORM = contextvars.ContextVar('limijax_pointwise_form', default='conv')


@contextlib.contextmanager
def pointwise_as_matmul():
  """Models traced inside build their 1x1 convolutions as matrix products over channels,
  with the same parameters. The vectorised seeds' step is traced inside: under ``vmap``
  XLA:CPU turns a batched 1x1 convolution into a feature-grouped convolution, which made
  two seeds cost 3.3 single steps on a 2-core CPU; as matrix products they cost 1.9. (One
  seed keeps the convolution: as a matrix product it runs ~15 % slower there.)"""
  token = _POINTWISE_FORM.set('matmul')
  try:
    yield
  finally:
    _POINTWISE_FORM.reset(token)


class Pointwise(nn.Module):
  """A 1x1 convolution with the parameters of ``nn.Conv`` (``kernel`` of shape
  (1, 1, C_in, features), ``bias``, created in the same order): XLA's convolution with
  the kernel gradient as one matrix product (:func:`limijax.depthwise.pointwise_conv`),
  or with ``as_matmul`` a matrix product over channels."""
  features: int
  use_bias: bool = False
  bias_init: Callable = nn.initializers.zeros_init()
  as_matmul: bool = False

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', conv_init, (1, 1, x.shape[-1], self.features), jnp.float32)
    if self.as_matmul:
      y = jnp.einsum('...c,cd->...d', x, kernel[0, 0])
    else:
      y = depthwise.pointwise_conv(x, kernel)
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), jnp.float32)
    return y


def pointwise(features: int, use_bias: bool = False, name: str | None = None,
              bias_init: Callable = nn.initializers.zeros_init()) -> nn.Module:
  """A 1x1 convolution (:class:`Pointwise`); inside :func:`pointwise_as_matmul` the same
  parameters as a matrix product."""
  return Pointwise(features, use_bias, bias_init, _POINTWISE_FORM.get() == 'matmul',
                   name=name)


class _Kernel(nn.Module):
  """A convolution kernel alone: ``kernel`` created as ``nn.Conv`` and
  :class:`DepthwiseConv` create theirs (same initialiser, same random stream)."""
  shape: tuple

  @nn.compact
  def __call__(self):
    return self.param('kernel', conv_init, self.shape, jnp.float32)


def _separable_kernels(k: int, channels: int, features: int):
  """``(dw, pw)``: the kernels of a bias-free k x k :class:`DSConv`, created under the
  calling module's ``dw`` and ``pw`` (call it inside a compact method)."""
  return (_Kernel((k, k, 1, channels), name='dw')(),
          _Kernel((1, 1, channels, features), name='pw')())


class DSConv(nn.Module):
  """Depthwise-separable convolution: depthwise k x k (stride s), then pointwise.

  Always the two steps. (Computing both as one dense k x k convolution, with the kernel
  ``dw * pw``, was faster in the training step until XLA's buffers were given huge pages
  (README, Speed); since then the two steps are faster on a 2-core CPU for every shape in
  the model: 20 -> 8 channels at 256x256, batch 16, forward 31 against 73 ms.)"""
  features: int
  kernel_size: int = 3
  stride: int = 1
  use_bias: bool = False
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    # With valid_hw, 0 past each image's border: after the depthwise conv or after the 1x1
    # conv (which keeps zeros when it has no bias), whichever has fewer channels.
    mask_after_pointwise = self.features <= x.shape[-1] and not self.use_bias
    x = DepthwiseConv(self.kernel_size, self.stride, self.impl, name='dw')(x)
    if not mask_after_pointwise:
      x = zero_invalid(x)
    x = pointwise(self.features, self.use_bias, name='pw')(x)
    return zero_invalid(x) if mask_after_pointwise else x


def eca_kernel_size(channels: int) -> int:
  t = int(abs(math.log2(channels) / 2 + 0.5))
  return t if t % 2 else t + 1


class ECA(nn.Module):
  """Efficient Channel Attention (ECA-Net): GAP, 1-D conv across channels, sigmoid, rescale."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    k = eca_kernel_size(c)
    kernel = self.param('kernel', normal_init(1.0 / math.sqrt(k)), (k,), jnp.float32)
    v = valid_size(x)
    if v is None:
      y = spatial_sums(x) / (x.shape[1] * x.shape[2])  # (N, C): the global average pool
    else:  # over the valid part alone
      y = spatial_sums(x) / (v[0] * v[1]).astype(x.dtype)[:, None]  # x: 0 beyond it
    yp = jnp.pad(y, ((0, 0), (k // 2, k // 2)))
    # 1-D cross-correlation over the channel axis, as torch Conv1d(1, 1, k, padding=k//2).
    z = sum(kernel[i] * yp[:, i:i + c] for i in range(k))
    return x * broadcast_hw(jax.nn.sigmoid(z), x.shape)


class SES(nn.Module):
  """Stability-Enhanced Stem (Fig. 3a): standard 3x3 conv + GroupNorm to ``mid_features``,
  then a DSConv raising the channels to ``features``, + GroupNorm, + ECA."""
  features: int = 8
  mid_features: int = 4
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    if x.shape[-1] == 1:  # a grey image: the same parameters, a faster form on CPU
      x = OneChannelConv(self.mid_features, impl=self.impl, name='conv')(x)
    else:
      x = zero_invalid(nn.Conv(self.mid_features, (3, 3), padding=((1, 1), (1, 1)),
                               use_bias=False, kernel_init=conv_init, name='conv')(x))
    x = nn.relu(gn(self.mid_features, 'gn1')(x))
    x = DSConv(self.features, impl=self.impl, name='dsconv')(x)
    x = nn.relu(gn(self.features, 'gn2')(x))
    return ECA(name='eca')(x)


class DSConvBNStem(nn.Module):
  """The "w/o SES" stem: depthwise-separable 3x3 conv + BatchNorm + ReLU."""
  features: int = 8
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool):
    x = DSConv(self.features, impl=self.impl, name='dsconv')(x)
    # momentum 0.9 / eps 1e-5 = torch.nn.BatchNorm2d's defaults (torch momentum 0.1).
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name='bn')(x)
    return nn.relu(x)


class LMB(nn.Module):
  """Lightweight Multi-branch Bottleneck (Fig. 3c); halves H and W."""
  features: int
  kernel_sizes: Sequence[int] = (3, 7)
  bottleneck_ratio: float = 0.5
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    mid = max(1, int(self.features * self.bottleneck_ratio))
    y = nn.relu(gn(mid, 'reduce_gn')(pointwise(mid, name='reduce')(x)))
    branches = []
    for i, k in enumerate(self.kernel_sizes):
      b = DSConv(mid, kernel_size=k, stride=2, impl=self.impl, name=f'branch{i}')(y)
      branches.append(nn.relu(gn(mid, f'branch{i}_gn')(b)))
    y = jnp.concatenate(branches, axis=-1)
    y = gn(self.features, 'fuse_gn')(pointwise(self.features, name='fuse')(y))
    y = ECA(name='eca')(y)
    shortcut = avg_pool2(x)
    if x.shape[-1] != self.features:
      shortcut = pointwise(self.features, name='shortcut')(shortcut)
    return nn.relu(y + shortcut)


class ResidualBlock(nn.Module):
  """The "w/o LMB" block: two 3x3 convs (the first with stride 2) + GN and a shortcut."""
  features: int

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.features, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                use_bias=False, kernel_init=conv_init, name='conv1')(x)
    y = nn.relu(gn(self.features, 'gn1')(zero_invalid(y)))
    y = zero_invalid(nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                             kernel_init=conv_init, name='conv2')(y))
    y = gn(self.features, 'gn2')(y)
    shortcut = avg_pool2(x)
    if x.shape[-1] != self.features:
      shortcut = pointwise(self.features, name='shortcut')(shortcut)
    return nn.relu(y + shortcut)


class HUF(nn.Module):
  """Hybrid Upsampling Fusion (Fig. 4a): DSTC + bilinear x2 of ``deep``, fused with ``skip``.

  With ``hybrid=False`` (the "w/o HUF" ablation) the deeper feature is upsampled by
  bilinear interpolation followed by a depthwise-separable convolution only.
  """
  features: int
  hybrid: bool = True
  impl: str = 'auto'

  @nn.compact
  def __call__(self, deep, skip):
    if self.hybrid:
      dstc = DepthwiseConvTranspose(self.impl, name='dstc_dw')(deep)
      dstc = pointwise(self.features, name='dstc_pw')(dstc)
      bil = deep
      if deep.shape[-1] != self.features:
        bil = pointwise(self.features, name='bilinear_proj')(bil)
      # 0 past each image's border: the sum at once (the 1x1 conv has no bias)
      up = zero_invalid(dstc + upsample_bilinear(replicate_valid_edge(bil), 2))
    else:
      up = DSConv(self.features, impl=self.impl, name='up_dsconv')(
          zero_invalid(upsample_bilinear(replicate_valid_edge(deep), 2)))
    y = pointwise(self.features, name='fuse')(jnp.concatenate([up, skip], axis=-1))
    return nn.relu(gn(self.features, 'fuse_gn')(y))


class _DSConvKernels(nn.Module):
  """The parameters of a bias-free 3x3 :class:`DSConv` (``dw``, ``pw``), not applied."""
  features: int

  @nn.compact
  def __call__(self, channels: int):
    return _separable_kernels(3, channels, self.features)


class FastUp(nn.Module):
  """FastUp (Fig. 4b): bilinear x``factor``, then a depthwise-separable 3x3 conv.

  With the ``shift`` depthwise form (``auto``) the upsampling is folded into the
  convolutions (:func:`limijax.depthwise.upsample_separable_conv`: one dense conv at
  the input resolution, never the upsampled tensor); ``grouped`` computes the literal
  sequence. Same parameters either way.
  """
  factor: int
  features: int = 4
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    if depthwise.resolve_impl(self.impl) == 'grouped':
      x = DSConv(self.features, impl=self.impl, name='dsconv')(
          zero_invalid(upsample_bilinear(replicate_valid_edge(x), self.factor)))
    else:
      dw, pw = _DSConvKernels(self.features, name='dsconv')(x.shape[-1])
      x = depthwise.upsample_separable_conv(
          replicate_valid_edge(x), dw, pw, self.factor,
          as_matmul=_POINTWISE_FORM.get() == 'matmul', valid=valid_size(x))
    return nn.relu(gn(self.features, 'gn')(zero_invalid(x)))


class SegmentHead(nn.Module):
  """Segment head (Fig. 4c): depthwise-separable 3x3 + GN + ReLU, then 1x1 to one logit."""
  features: int = 8
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    x = DSConv(self.features, impl=self.impl, name='dsconv')(x)
    x = nn.relu(gn(self.features, 'gn')(x))
    return pointwise(1, use_bias=True, bias_init=nn.initializers.constant(PRIOR_BIAS),
                     name='logit')(x)


class LimiNet(nn.Module):
  """Limi-Net: Lightweight Stable Encoder + Coarse-to-fine Hybrid Upsampling Decoder."""
  channels: Sequence[int] = (8, 16, 32, 32)
  stem_channels: int = 4  # SES's first (standard) conv; its DSConv raises to channels[0]
  in_channels: int = 1
  fastup_channels: int = 4
  head_channels: int = 8
  stem: str = 'ses'
  block: str = 'lmb'
  upsampler: str = 'huf'
  head: str = 'c2f'
  depthwise: str = 'auto'

  def check_input(self, x) -> None:
    ok = (x.ndim == 4 and x.shape[1] % STRIDE == 0 and x.shape[2] % STRIDE == 0
          and x.shape[1] > 0 and x.shape[2] > 0 and x.shape[3] == self.in_channels)
    if not ok:
      raise InputShapeError(
          f'Limi-Net expects input of shape (N, H, W, {self.in_channels}) with H and W '
          f'multiples of {STRIDE}; got {tuple(x.shape)}')

  @nn.compact
  def __call__(self, x, train: bool = False, valid_hw=None, valid_masks=None):
    """``x`` (N, H, W, C) -> final logits (N, H, W, 1); with ``train`` also the C2F side
    logits. ``valid_hw`` (inference only): (N, 2) int32, each image's own height and width
    (multiples of 16) inside a batch padded beyond them with zeros; every layer then
    computes, on each image's valid part, what it computes on the image alone at its own
    size (statistics over the valid part, zero padding and bilinear clamping at its
    border; equal to float rounding, tests/test_eval_batched.py), so images of different
    sizes share one program. Logits beyond the valid part are meaningless.
    ``valid_masks``: optionally, :func:`valid_masks` of ``valid_hw`` (faster)."""
    self.check_input(x)
    for name, value, allowed in (('stem', self.stem, STEMS), ('block', self.block, BLOCKS),
                                 ('upsampler', self.upsampler, UPSAMPLERS),
                                 ('head', self.head, HEADS)):
      if value not in allowed:
        raise UserError(f'model.{name} must be one of {allowed}, got {value!r}')
    if valid_hw is not None:
      if train:
        raise ValueError('valid_hw is for inference only (train=False)')
      valid_hw = jnp.asarray(valid_hw, jnp.int32)
      if valid_hw.shape != (x.shape[0], 2):
        raise ValueError(f'valid_hw must be ({x.shape[0]}, 2), got {valid_hw.shape}')
      token = _VALID.set(_Valid(valid_hw, x.shape[1], valid_masks))
    else:
      token = _VALID.set(None)
    try:
      x = zero_invalid(x)  # whatever the padding beyond the valid part held
      impl = self.depthwise
      c1, c2, c3, c4 = self.channels
      # --- Lightweight Stable Encoder (3.3) ---
      if self.stem == 'ses':
        e0 = SES(c1, self.stem_channels, impl, name='ses')(x)
      else:
        # BatchNorm's shift leaves values beyond the valid part, which the shortcuts of
        # the blocks would carry on: zero them (GroupNorm does so everywhere else)
        e0 = zero_invalid(DSConvBNStem(c1, impl, name='stem_dsconv_bn')(x, train))
      if self.block == 'lmb':
        blocks = [LMB(c, impl=impl, name=f'lmb{i + 1}') for i, c in enumerate(self.channels)]
      else:
        blocks = [ResidualBlock(c, name=f'res{i + 1}') for i, c in enumerate(self.channels)]
      e1 = blocks[0](e0)  # 1/2
      e2 = blocks[1](e1)  # 1/4
      e3 = blocks[2](e2)  # 1/8
      e4 = blocks[3](e3)  # 1/16
      # --- Coarse-to-fine Hybrid Upsampling Decoder (3.4) ---
      hybrid = self.upsampler == 'huf'
      d3 = HUF(c3, hybrid, impl, name='huf1')(e4, e3)  # 1/8
      d2 = HUF(c2, hybrid, impl, name='huf2')(d3, e2)  # 1/4
      d1 = HUF(c1, hybrid, impl, name='huf3')(d2, e1)  # 1/2
      d0 = HUF(c1, hybrid, impl, name='huf4')(d1, e0)  # 1/1
      fu = self.fastup_channels
      f3 = FastUp(8, fu, impl, name='fastup8')(d3)
      f2 = FastUp(4, fu, impl, name='fastup4')(d2)
      f1 = FastUp(2, fu, impl, name='fastup2')(d1)
      final = SegmentHead(self.head_channels, impl, name='head')(
          jnp.concatenate([f3, f2, f1, d0], axis=-1))
      if not train:
        return final
      if self.head == 'fpn':
        return final, ()
      # C2F side heads (3.4, Fig. 4c; training only): an independent SegmentHead on each
      # HUF output brought to full resolution, coarsest (x8) first, the order of
      # loss.side_alphas.
      sides = tuple(SegmentHead(self.head_channels, impl, name=f'side{i}')(f)
                    for i, f in enumerate((f3, f2, f1, d0)))
      return final, sides
    finally:
      _VALID.reset(token)


def check_config(model_cfg) -> None:
  """Raise :class:`ConfigError` naming the first ``model.*`` key that cannot build a model."""
  channels = tuple(model_cfg.channels)
  if len(channels) != 4 or not all(isinstance(c, int) and c > 0 for c in channels):
    raise ConfigError('model.channels', f'needs four positive integers, got {channels!r}')
  if not (isinstance(model_cfg.stem_channels, int) and model_cfg.stem_channels > 0):
    raise ConfigError('model.stem_channels', f'must be a positive integer, got '
                      f'{model_cfg.stem_channels!r}')
  for key, allowed in (('stem', STEMS), ('block', BLOCKS), ('upsampler', UPSAMPLERS),
                       ('head', HEADS), ('depthwise', depthwise.IMPLS)):
    if model_cfg[key] not in allowed:
      raise ConfigError(f'model.{key}', f'must be one of {", ".join(allowed)}; '
                        f'got {model_cfg[key]!r}')


def from_config(config, in_channels: int | None = None) -> LimiNet:
  """Build the model from a run config (``config.model`` and ``config.data.in_channels``)."""
  m = config.model
  return LimiNet(
      channels=tuple(m.channels), stem_channels=m.stem_channels,
      in_channels=in_channels or config.data.in_channels,
      stem=m.stem, block=m.block, upsampler=m.upsampler, head=m.head, depthwise=m.depthwise)


def init(model: LimiNet, rng: jax.Array, size: int = 32) -> dict:
  """Initialise all variables (side heads included) on a (1, size, size, C) input.

  The random values come from two draws, one per distribution, each as long as the
  kernels it feeds (:class:`_Draws`), cut into the kernels in the order the model creates
  them: He-normal (fan-in) for every convolution, a normal for the ECA kernels. Flax's own ``model.init(key, x)`` creates
  the same variables with the same distributions but draws each one from its own key, so
  its values differ; training starts from these.

  The draws always run on the host's CPU (:func:`init_device`) and the variables are then
  placed on this process's first device: every backend starts from the CPU's values, and
  a GPU skips compiling (and autotuning the convolutions of) a program it would run once,
  about 30 s on an H100."""
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
def _jitted_init(model: LimiNet, compiler_options: tuple = ()):
  # jitted: op-by-op initialisation of this many small ops is slower than compiling it;
  # one jitted function per model (modules are hashable) and options ((key, value)
  # pairs), so it is traced once per process
  def draw(rng, x):
    draws = _Draws()
    token = _INIT_DRAWS.set(draws)
    try:
      variables = model.init(rng, x, train=True)
    finally:
      _INIT_DRAWS.reset(token)
    return draws.fill(rng, variables)

  return jax.jit(draw, compiler_options=dict(compiler_options) or None)


@functools.lru_cache(maxsize=64)
def variable_shapes(model: LimiNet) -> dict:
  """The shapes and dtypes of ``init(model, key)``'s variables (``jax.ShapeDtypeStruct``
  leaves), traced once per model and process: restoring a checkpoint needs them, and
  tracing the model costs a second or two."""
  x = jax.ShapeDtypeStruct((1, 32, 32, model.in_channels), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=True), x)


def count_params(params) -> int:
  return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


def inference_params(params) -> dict:
  """``params`` without the training-only C2F side heads (``side0`` ... ``side3``)."""
  return {k: v for k, v in params.items() if not k.startswith('side')}
