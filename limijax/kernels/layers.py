"""The convolution and upsampling layers of Limi-Net, with flax ``nn.Conv``'s parameters
(``kernel`` of shape (kh, kw, C_in / groups, C_out), ``bias``), computed by the forms of
:mod:`limijax.kernels.depthwise`.

:class:`Forms` says which forms a model uses; it is an attribute of every block, so that
what a module builds shows in its attributes. The parameters are the same whatever it says.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from limijax.kernels import depthwise
from limijax.kernels import valid as valid_lib

# Every convolution kernel's initialiser: He-normal (fan-in), truncated at two standard
# deviations (flax's ``he_normal``). limijax.kernels.init draws the values of a whole
# model at once, with this distribution.
conv_init = nn.initializers.he_normal()

POINTWISE_FORMS = ('conv', 'matmul')
NORM_FORMS = ('fast', 'flax')
BILINEAR_FORMS = ('stencil', 'resize')


@dataclasses.dataclass(frozen=True)
class Forms:
  """The forms a model's layers compute with; the parameters never depend on them.

  * ``depthwise``: ``auto``, ``grouped`` (XLA's grouped convolution, what ``nn.Conv``
    computes: the plain form) or ``shift`` (:func:`depthwise.resolve_impl`);
  * ``pointwise``: ``conv`` (XLA's convolution, its kernel gradient as one matrix
    product) or ``matmul`` (a matrix product over channels, which ``vmap`` over seeds
    keeps a matrix product, where XLA:CPU would turn a batched 1x1 convolution into a slow
    feature-grouped one);
  * ``groupnorm``: ``fast`` (:class:`limijax.kernels.norm.GroupNorm`) or ``flax``
    (``flax.linen.GroupNorm`` itself, the plain form; not with ``valid_hw``);
  * ``bilinear``: ``stencil`` (:func:`upsample_bilinear`; FastUp folded into its
    convolutions with the shift form) or ``resize`` (``jax.image.resize``, the plain form,
    and FastUp as the literal upsampling then convolutions).

  ``Forms('grouped', 'conv', 'flax', 'resize')`` is the reference that every fast form is
  tested against (tests/test_depthwise.py)."""
  depthwise: str = 'auto'
  pointwise: str = 'conv'
  groupnorm: str = 'fast'
  bilinear: str = 'stencil'


class DepthwiseConv(nn.Module):
  """Depthwise k x k convolution (no bias)."""
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
  :func:`depthwise.conv_one_channel`."""
  features: int
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', conv_init, (3, 3, 1, self.features), jnp.float32)
    return depthwise.conv_one_channel(x, kernel, impl=self.impl)


class Pointwise(nn.Module):
  """A 1x1 convolution with the parameters of ``nn.Conv`` (``kernel`` of shape
  (1, 1, C_in, features), ``bias``, created in the same order), in the ``form`` of
  :class:`Forms`."""
  features: int
  use_bias: bool = False
  bias_init: Callable = nn.initializers.zeros_init()
  form: str = 'conv'

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', conv_init, (1, 1, x.shape[-1], self.features), jnp.float32)
    if self.form == 'matmul':
      y = jnp.einsum('...c,cd->...d', x, kernel[0, 0])
    else:
      y = depthwise.pointwise_conv(x, kernel)
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), jnp.float32)
    return y


class _Kernel(nn.Module):
  """A convolution kernel alone: ``kernel`` created as ``nn.Conv`` and
  :class:`DepthwiseConv` create theirs (same initialiser)."""
  shape: tuple

  @nn.compact
  def __call__(self):
    return self.param('kernel', conv_init, self.shape, jnp.float32)


class SeparableKernels(nn.Module):
  """The parameters of a bias-free 3x3 depthwise-separable conv (``dw``, ``pw``), not
  applied: for a caller that computes the conv its own way."""
  features: int

  @nn.compact
  def __call__(self, channels: int):
    return (_Kernel((3, 3, 1, channels), name='dw')(),
            _Kernel((1, 1, channels, self.features), name='pw')())


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


def upsample(x: jax.Array, factor: int, forms: Forms) -> jax.Array:
  """Bilinear x``factor`` of NHWC ``x`` in the upsampling form of ``forms``."""
  if forms.bilinear == 'resize':
    n, h, w, c = x.shape
    return jax.image.resize(x, (n, h * factor, w * factor, c), 'bilinear')
  return upsample_bilinear(x, factor)


def avg_pool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample_separable_conv(x, dw, pw, factor: int, forms: Forms,
                            valid: valid_lib.Valid | None) -> jax.Array:
  """FastUp's bilinear x``factor`` folded into its 3x3 separable conv
  (:func:`depthwise.upsample_separable_conv`), each image's border at its valid size."""
  return depthwise.upsample_separable_conv(
      valid_lib.replicate_valid_edge(x, valid), dw, pw, factor,
      as_matmul=forms.pointwise == 'matmul', valid=valid_lib.size_of(x, valid))
