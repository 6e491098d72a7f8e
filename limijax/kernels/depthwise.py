"""Depthwise convolutions in two interchangeable forms.

XLA's CPU backend runs grouped convolutions (``feature_group_count = C``) far more
slowly than PyTorch's depthwise kernel, while a depthwise k x k convolution written as
k*k shifted multiply-adds is exact and many times faster there. On a GPU the shift form
wins too, against cuDNN's grouped convolution, whose depthwise gradients are slow (the
figures: BENCHMARKS.md). Every function here takes ``impl``:

* ``'grouped'`` - ``lax.conv_general_dilated`` with ``feature_group_count``;
* ``'shift'``   - shifted slices times per-channel weights, summed (polyphase for the
  transposed convolution);
* ``'auto'``    - ``'shift'``, the faster form on every backend measured (CPU, GPU).

Both forms give the same numbers (tests check outputs and gradients to 1e-5). The shift
forms carry hand-written gradients (``jax.custom_vjp``): autodiff of k*k slices would
transpose each into a pad of the whole input and add them up, a backward pass many
times the size of the forward that is slow to compile and to run. Their kernel
gradients are, on a CPU, XLA's filter-gradient convolution: the one part of XLA's
grouped convolution that runs fast there (:func:`_kernel_grad`). Kernels
are stored as ``(kh, kw, 1, C)`` — flax's layout for a grouped conv with one input
channel per group — so parameters do not depend on the implementation chosen.
Padding is always explicit, PyTorch style (``padding = k // 2``), because flax's
``'SAME'`` puts the extra row of a stride-2 convolution on the other side.

The model's other convolution kernels live here too, each equal to its literal form
(tests): :func:`pointwise_conv` (a 1x1 convolution whose kernel gradient is one matrix
product) and :func:`upsample_separable_conv` (FastUp's upsampling and convolutions
folded into one convolution at the input resolution).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ('auto', 'grouped', 'shift')
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def resolve_impl(impl: str) -> str:
  if impl not in IMPLS:
    raise ValueError(f'depthwise implementation must be one of {IMPLS}, got {impl!r}')
  if impl == 'auto':
    return 'shift'  # measured faster on CPU and on an H100 GPU (module docstring)
  return impl


def _window(xp: jax.Array, r0: int, c0: int, rows: int, cols: int,
            stride: int = 1) -> jax.Array:
  """``xp[:, r0 + stride*i, c0 + stride*j, :]`` for ``i < rows``, ``j < cols``."""
  n, _, _, c = xp.shape
  return lax.slice(xp, (0, r0, c0, 0),
                   (n, r0 + stride * (rows - 1) + 1, c0 + stride * (cols - 1) + 1, c),
                   (1, stride, stride, 1))


def _correlate(xp: jax.Array, w2: jax.Array, stride: int, dilation: int,
               rows: int, cols: int) -> jax.Array:
  """``sum_ab xp[:, s*i + d*a, s*j + d*b, :] * w2[a, b]`` (a per-channel correlation of
  the already padded ``xp``), as k*k shifted multiply-adds."""
  out = None
  for a in range(w2.shape[0]):
    for b in range(w2.shape[1]):
      term = _window(xp, a * dilation, b * dilation, rows, cols, stride) * w2[a, b]
      out = term if out is None else out + term
  return out


def _correlate_kernel_grad(xp: jax.Array, g: jax.Array, kh: int, kw: int, stride: int,
                           dilation: int) -> jax.Array:
  """The gradient of ``sum(g * _correlate(xp, w2, ...))`` with respect to ``w2``:
  ``(kh, kw, C)``, one reduction over (N, H, W) per tap."""
  _, rows, cols, _ = g.shape
  return jnp.stack([
      jnp.stack([jnp.sum(_window(xp, a * dilation, b * dilation, rows, cols, stride) * g,
                         axis=(0, 1, 2)) for b in range(kw)])
      for a in range(kh)])


_FILTER_GRADIENT_CONV_BACKENDS = ('cpu',)  # where _kernel_grad uses XLA's convolution


def _kernel_grad(x: jax.Array, g: jax.Array, k: int, stride: int, dilation: int,
                 pad: int) -> jax.Array:
  """The gradient, with respect to the ``(k, k, C)`` kernel, of ``sum(g * y)`` where ``y``
  is the convolution of the unpadded ``x`` (C channels, or 1 broadcast to C) with padding
  ``pad``: on a CPU, XLA's filter-gradient convolution (the transpose of the grouped
  convolution in its kernel), faster there than the k*k reductions of
  :func:`_correlate_kernel_grad` (BENCHMARKS.md). Other backends keep the reductions,
  the form measured on a GPU."""
  if jax.default_backend() not in _FILTER_GRADIENT_CONV_BACKENDS:
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return _correlate_kernel_grad(xp, g, k, k, stride, dilation)

  def conv(kernel):
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
        dimension_numbers=_NHWC, feature_group_count=x.shape[-1])

  (dk,) = jax.linear_transpose(conv, jax.ShapeDtypeStruct((k, k, 1, g.shape[-1]), g.dtype))(g)
  return dk[:, :, 0, :]


def _phase_taps(k: int, stride: int, dilation: int, pad: int):
  """Per input phase ``r`` (rows ``stride*m + r``), the taps ``(a, off)`` with
  ``dx[stride*m + r] += g[m + off] * w[a]``: the transpose of ``out[i] = sum_a
  xp[stride*i + dilation*a]`` reads ``g[(r + pad - dilation*a) / stride]`` where exact."""
  return [[(a, (r + pad - dilation * a) // stride) for a in range(k)
           if (r + pad - dilation * a) % stride == 0] for r in range(stride)]


def _conv_input_grad(g: jax.Array, w2: jax.Array, h: int, w: int, stride: int,
                     dilation: int) -> jax.Array:
  """The gradient of the shift form with respect to its (unpadded, ``h`` x ``w``) input:
  for stride 1 a correlation with the flipped kernel; for stride s, one such
  correlation per (row, column) phase, interleaved (no multiplications by zeros)."""
  n, ho, wo, c = g.shape
  k = w2.shape[0]
  pad = dilation * (k // 2)
  taps = _phase_taps(k, stride, dilation, pad)
  mh, mw = -(-h // stride), -(-w // stride)  # rows, columns per phase (the last may spill)
  offs = [o for t in taps for _, o in t] or [0]
  lo = max(0, -min(offs))
  hi_r = max(0, mh - 1 + max(offs) - (ho - 1))
  hi_c = max(0, mw - 1 + max(offs) - (wo - 1))
  gp = jnp.pad(g, ((0, 0), (lo, hi_r), (lo, hi_c), (0, 0)))
  phases = []
  for r in range(stride):
    row = []
    for q in range(stride):
      acc = None
      for a, oa in taps[r]:
        for b, ob in taps[q]:
          term = _window(gp, lo + oa, lo + ob, mh, mw) * w2[a, b]
          acc = term if acc is None else acc + term
      row.append(jnp.zeros((n, mh, mw, c), g.dtype) if acc is None else acc)
    phases.append(row)
  if stride == 1:
    return phases[0][0]
  # Interleave: dx[stride*m + r, stride*p + q] = phases[r][q][m, p].
  dx = jnp.stack([jnp.stack(r, axis=3) for r in phases], axis=2)
  dx = dx.reshape(n, stride * mh, stride * mw, c)
  return dx[:, :h, :w]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shift_conv(x: jax.Array, w2: jax.Array, stride: int, dilation: int) -> jax.Array:
  return _shift_conv_fwd(x, w2, stride, dilation)[0]


def _shift_conv_fwd(x, w2, stride, dilation):
  _, h, w, _ = x.shape
  k = w2.shape[0]
  pad = dilation * (k // 2)
  ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  wo = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return _correlate(xp, w2, stride, dilation, ho, wo), (x, w2)


def _shift_conv_bwd(stride, dilation, res, g):
  # Written by hand: differentiating k*k slices gives k*k pads and adds of full-size
  # buffers (over a thousand pad ops in the training step) and a long compile.
  x, w2 = res
  _, h, w, _ = x.shape
  k = w2.shape[0]
  dx = _conv_input_grad(g, w2, h, w, stride, dilation)
  if x.shape[-1] != dx.shape[-1]:  # one input channel broadcast to every output channel
    dx = jnp.sum(dx, axis=-1, keepdims=True)
  return dx, _kernel_grad(x, g, k, stride, dilation, dilation * (k // 2))


_shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)


def depthwise_conv(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
                   dilation: int = 1, impl: str = 'auto') -> jax.Array:
  """Depthwise k x k convolution of NHWC ``x`` with ``kernel`` of shape (k, k, 1, C).

  Padding is ``dilation * (k // 2)`` on every side (k odd), so stride 1 keeps the size
  and stride 2 halves an even size, exactly as ``torch.nn.Conv2d(padding=...)``.
  """
  k = kernel.shape[0]
  if kernel.shape != (k, k, 1, x.shape[-1]) or k % 2 != 1:
    raise ValueError(f'depthwise kernel must be (k, k, 1, {x.shape[-1]}) with k odd, '
                     f'got {kernel.shape}')
  pad = dilation * (k // 2)
  impl = resolve_impl(impl)
  if impl == 'grouped':
    return lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(stride, stride),
        padding=((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
        dimension_numbers=_NHWC, feature_group_count=x.shape[-1])
  # Shift-and-add: output pixel (i, j) reads input (stride*i + dilation*a - pad, ...).
  return _shift_conv(x, kernel[:, :, 0, :].astype(x.dtype), stride, dilation)


def conv_one_channel(x: jax.Array, kernel: jax.Array, *, impl: str = 'auto') -> jax.Array:
  """Dense k x k convolution, stride 1, padding ``k // 2``, of a one-channel NHWC ``x``
  with ``kernel`` of shape (k, k, 1, C_out) (flax's ``nn.Conv`` layout): the stem's first
  convolution on a grey image. With one input channel every output channel is a
  depthwise convolution of the same image, so the shift form applies; XLA's CPU
  convolution is slow for this shape.
  """
  k = kernel.shape[0]
  if x.shape[-1] != 1 or kernel.shape[:3] != (k, k, 1) or k % 2 != 1:
    raise ValueError(f'conv_one_channel needs a one-channel input and a (k, k, 1, C) '
                     f'kernel with k odd, got {x.shape} and {kernel.shape}')
  if resolve_impl(impl) == 'grouped':
    return lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(1, 1),
        padding=((k // 2, k // 2), (k // 2, k // 2)), dimension_numbers=_NHWC)
  return _shift_conv(x, kernel[:, :, 0, :].astype(x.dtype), 1, 1)


def depthwise_conv_transpose2x(x: jax.Array, kernel: jax.Array, *,
                               impl: str = 'auto') -> jax.Array:
  """Depthwise transposed convolution, kernel 4, stride 2, padding 1: (H, W) -> (2H, 2W).

  Equals ``torch.nn.ConvTranspose2d(C, C, 4, stride=2, padding=1, groups=C)`` whose
  weight ``(C, 1, 4, 4)`` maps to ``kernel[a, b, 0, c] = weight[c, 0, a, b]``.

  Per axis, output ``2m`` is ``x[m] w[1] + x[m-1] w[3]`` and output ``2m+1`` is
  ``x[m+1] w[0] + x[m] w[2]`` (out-of-range x is zero); the polyphase form computes the
  four (row, column) parities with 2 x 2 taps each and interleaves them.
  """
  if kernel.shape != (4, 4, 1, x.shape[-1]):
    raise ValueError(f'transposed depthwise kernel must be (4, 4, 1, {x.shape[-1]}), '
                     f'got {kernel.shape}')
  impl = resolve_impl(impl)
  n, h, w, c = x.shape
  if impl == 'grouped':
    # A transposed conv is a conv of the 2x-dilated input with the flipped kernel and
    # padding k - 1 - p = 2 on each side.
    return lax.conv_general_dilated(
        x, kernel[::-1, ::-1].astype(x.dtype), window_strides=(1, 1),
        padding=((2, 2), (2, 2)), lhs_dilation=(2, 2),
        dimension_numbers=_NHWC, feature_group_count=c)
  return _shift_conv_t2x(x, kernel[:, :, 0, :].astype(x.dtype))


@jax.custom_vjp
def _shift_conv_t2x(x: jax.Array, w2: jax.Array) -> jax.Array:
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))

  def win(dr, dc):  # x[m + dr, q + dc] for all m, q, zero outside
    return _window(xp, 1 + dr, 1 + dc, h, w)

  # (offset into x, kernel index) per output parity, from the formula above.
  taps = {0: ((0, 1), (-1, 3)), 1: ((1, 0), (0, 2))}
  phases = []
  for pr in (0, 1):
    row = []
    for pc in (0, 1):
      acc = None
      for dr, ka in taps[pr]:
        for dc, kb in taps[pc]:
          term = win(dr, dc) * w2[ka, kb]
          acc = term if acc is None else acc + term
      row.append(acc)
    phases.append(row)
  # Interleave: out[2m + pr, 2q + pc] = phases[pr][pc][m, q].
  out = jnp.stack([jnp.stack(r, axis=3) for r in phases], axis=2)  # n, h, 2, w, 2, c
  return out.reshape(n, 2 * h, 2 * w, c)


def _shift_conv_t2x_fwd(x, w2):
  return _shift_conv_t2x(x, w2), (x, w2)


def _shift_conv_t2x_bwd(res, g):
  # The transpose of this transposed convolution is the stride-2 correlation
  # dx[m] = sum_a g[2m + a - 1] w[a] (kernel 4, padding 1), and the kernel gradient
  # pairs x[m] with the same windows of g (the kernel gradient of that correlation).
  x, w2 = res
  _, h, w, _ = x.shape
  gp = jnp.pad(g, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return _correlate(gp, w2, 2, 1, h, w), _kernel_grad(g, x, 4, 2, 1, 1)


_shift_conv_t2x.defvjp(_shift_conv_t2x_fwd, _shift_conv_t2x_bwd)


# --------------------------------------------------------------------------- pointwise
@jax.custom_vjp
def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """1x1 convolution of NHWC ``x`` with ``kernel`` (1, 1, C, F), no bias: XLA's
  convolution forward and for the input gradient, and the kernel gradient as one matrix
  product over all pixels. Autodiff would take the kernel gradient from XLA's
  filter-gradient convolution, which on a CPU first copies both operands into a
  batch-innermost layout and is several times slower (BENCHMARKS.md)."""
  return _pointwise(x, kernel)


def _pointwise(x, kernel):
  return lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), 'VALID',
                                  dimension_numbers=_NHWC)


def _pointwise_fwd(x, kernel):
  return _pointwise(x, kernel), (x, kernel)


def _pointwise_bwd(res, g):
  x, kernel = res
  dx = _pointwise(g, jnp.swapaxes(kernel, 2, 3))
  dk = lax.dot_general(x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]),
                       (((0,), (0,)), ((), ())))
  return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


pointwise_conv.defvjp(_pointwise_fwd, _pointwise_bwd)


# --------------------------------------------------------------------------- FastUp
def _bilinear_source(o: int, factor: int) -> tuple[int, float]:
  """``(i, t)``: bilinear x``factor`` at output position ``o`` is
  ``(1 - t) * xe[i] + t * xe[i + 1]``, where ``xe`` is the input with its edge repeated
  once on each side. Half-pixel centres (PyTorch's ``align_corners=False``): ``o``
  samples the input at ``(o + 0.5) / factor - 0.5``, i.e. ``xe`` one further; the repeated
  edges reproduce PyTorch's clamping."""
  u = (o + 0.5) / factor + 0.5
  return math.floor(u), u - math.floor(u)


def _bilinear_taps(factor: int):
  """``taps[r, a, i]``: the weight of ``xe[m + i]`` (``xe``: the input with its edge
  repeated once on each side) in the bilinear x``factor`` upsampling at position
  ``factor * m + r + a - 1``, for output phase ``r`` and 3x3 kernel row ``a``: always
  within ``xe[m .. m + 2]``."""
  taps = [[[0.0] * 3 for _ in range(3)] for _ in range(factor)]
  for r in range(factor):
    for a in range(3):
      lo, t = _bilinear_source(r + a - 1, factor)
      taps[r][a][lo] += 1.0 - t
      taps[r][a][lo + 1] += t
  return taps


def _bilinear_line(v: jax.Array, factor: int) -> jax.Array:
  """Bilinear x``factor`` of ``v`` (N, L, C) along axis 1 at positions -1 .. factor*L
  (one past each edge, where the clamped interpolation keeps the edge value)."""
  n = v.shape[1]
  ve = jnp.concatenate([v[:, :1], v, v[:, -1:]], axis=1)
  lo, frac = zip(*(_bilinear_source(o, factor) for o in range(-1, factor * n + 1)))
  idx = jnp.asarray(lo)
  frac = jnp.asarray(frac, v.dtype)[None, :, None]
  return jnp.take(ve, idx, axis=1) * (1.0 - frac) + jnp.take(ve, idx + 1, axis=1) * frac


def upsample_separable_conv(x: jax.Array, dw_kernel: jax.Array, pw_kernel: jax.Array,
                            factor: int, *, as_matmul: bool = False,
                            valid=None) -> jax.Array:
  """``pointwise(depthwise3x3(bilinear_x_factor(x)))`` of NHWC ``x`` without building
  the upsampled tensor: FastUp's convolutions, ``dw_kernel`` (3, 3, 1, C) with zero
  padding 1 at the output resolution, ``pw_kernel`` (1, 1, C, F) without bias.

  Bilinear upsampling and a depthwise convolution are both linear and local, so each
  of the ``factor**2`` output phases ``(factor*m + r, factor*p + q)`` is a 3x3
  correlation of the edge-repeated input at ``(m, p)``; with the pointwise conv folded
  in, FastUp becomes one dense 3x3 convolution C -> ``factor**2 * F`` at the input
  resolution and a depth-to-space reshuffle: on a CPU an order of magnitude faster than
  upsampling first, forward and gradient (BENCHMARKS.md).

  The folded form sees the upsampled image continued one pixel past its border, where
  the real convolution sees zero padding: the four border lines are corrected by
  subtracting what those outside pixels contributed (1-D work). Results equal the
  literal form to float rounding (tests/test_depthwise.py). ``as_matmul`` computes the
  dense convolution as a matrix product of the 9 shifted windows (under ``vmap`` XLA:CPU
  turns a convolution with batched weights into a slow grouped one).

  ``valid`` (``(rows, cols)``, each (N,) int32) puts each image's bottom and right border
  at its own valid size instead of the array's: its bottom and right border lines are
  corrected there, per image (``x`` must then hold, just past its valid part, the edge
  values: :func:`limijax.kernels.valid.replicate_valid_edge`). Outputs beyond the valid part
  are meaningless.
  """
  n, h, w, c = x.shape
  f = pw_kernel.shape[-1]
  if dw_kernel.shape != (3, 3, 1, c) or pw_kernel.shape != (1, 1, c, f):
    raise ValueError(f'upsample_separable_conv needs kernels (3, 3, 1, {c}) and '
                     f'(1, 1, {c}, F); got {dw_kernel.shape} and {pw_kernel.shape}')
  w2 = dw_kernel[:, :, 0, :].astype(x.dtype)  # (3, 3, C)
  pw = pw_kernel[0, 0].astype(x.dtype)  # (C, F)
  taps = jnp.asarray(_bilinear_taps(factor), x.dtype)  # (factor, 3, 3): r, a, i
  # folded[i, j, c, (r, q, d)]: weight of xe[m + i, p + j, c] in output phase (r, q), channel d
  folded = jnp.einsum('abc,rai,qbj,cd->ijcrqd', w2, taps, taps, pw)
  folded = folded.reshape(3, 3, c, factor * factor * f)
  xe = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='edge')
  if as_matmul:
    windows = jnp.concatenate([xe[:, i:i + h, j:j + w] for i in range(3) for j in range(3)],
                              axis=-1)
    z = jnp.einsum('nhwk,kd->nhwd', windows, folded.reshape(9 * c, -1))
  else:
    z = lax.conv_general_dilated(xe, folded, (1, 1), 'VALID', dimension_numbers=_NHWC)
  hh, ww = factor * h, factor * w
  z = z.reshape(n, h, w, factor, factor, f).transpose(0, 1, 3, 2, 4, 5).reshape(n, hh, ww, f)

  # Border lines. Row -1 and row hh of the continued image (columns -1 .. ww) feed output
  # rows 0 and hh - 1 through kernel rows 0 and 2; columns -1 and ww (rows 0 .. hh - 1,
  # the corners already counted with the rows) feed output columns 0 and ww - 1.
  def line(v, k):  # (N, L + 2, C) correlated with k (3, C) -> (N, L, F)
    length = v.shape[1] - 2
    return sum(v[:, i:i + length] * k[i] for i in range(3)) @ pw

  def inner(v):  # rows 0 .. hh - 1 of a continued column, zero beyond
    return jnp.pad(_bilinear_line(v, factor)[:, 1:-1], ((0, 0), (1, 1), (0, 0)))

  z = z.at[:, 0].add(-line(_bilinear_line(x[:, 0], factor), w2[0]))
  if valid is None:
    z = z.at[:, hh - 1].add(-line(_bilinear_line(x[:, h - 1], factor), w2[2]))
    z = z.at[:, :, 0].add(-line(inner(x[:, :, 0]), w2[:, 0]))
    return z.at[:, :, ww - 1].add(-line(inner(x[:, :, w - 1]), w2[:, 2]))
  # Each image's own last row and column, and rows of the continued columns only up to
  # its own valid height (zero beyond, as past the array's edge above).
  rows, cols = (jnp.asarray(v, jnp.int32) for v in valid)

  def inner_valid(v):
    below = (lax.broadcasted_iota(jnp.int32, (1, hh + 2, 1), 1) <= (factor * rows)[:, None, None])
    return inner(v) * below.astype(v.dtype)

  last_row = jnp.take_along_axis(x, (rows - 1)[:, None, None, None], axis=1)[:, 0]
  last_col = jnp.take_along_axis(x, (cols - 1)[:, None, None, None], axis=2)[:, :, 0]
  bottom = line(_bilinear_line(last_row, factor), w2[2])  # (N, ww, F)
  right = line(inner_valid(last_col), w2[:, 2])  # (N, hh, F)
  z = z.at[:, :, 0].add(-line(inner_valid(x[:, :, 0]), w2[:, 0]))
  at_bottom = (lax.broadcasted_iota(jnp.int32, (1, hh, 1, 1), 1)
               == (factor * rows - 1)[:, None, None, None])
  at_right = (lax.broadcasted_iota(jnp.int32, (1, 1, ww, 1), 2)
              == (factor * cols - 1)[:, None, None, None])
  return (z - jnp.where(at_bottom, bottom[:, None], 0.0)
          - jnp.where(at_right, right[:, :, None], 0.0))
