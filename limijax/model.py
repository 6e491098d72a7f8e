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

This file holds the blocks as the paper draws them. How each operation is computed fast
(depthwise convolutions as shifted sums, GroupNorm's sums, FastUp's folded upsampling,
1x1 convolutions as matrix products for ``vmap``, images of several sizes in one batch,
initial values from two draws) is :mod:`limijax.kernels`'s, chosen through the blocks'
``forms`` attribute (:class:`limijax.kernels.layers.Forms`) and their ``valid`` argument
(:class:`limijax.kernels.valid.Valid`, None for a batch of whole images).

Decisions the paper leaves open (also listed in the README's model section):

* Activation: ReLU everywhere (cheap, exports to every runtime).
* Normalisation: GroupNorm with ``min(4, C // 2)`` groups and eps 1e-5 (PyTorch's) after
  every convolution that is not followed by a head or by the residual sum's own norm.
  GroupNorm, not BatchNorm, also beyond the stem: the paper's reason for it in SES
  (small batches) holds for the whole network, and it makes training and inference
  compute the same function. ``norm='batch'`` (config ``model.norm``) puts BatchNorm in
  every block outside SES instead (:class:`Norm`), the reading of the paper's contrast
  between SES's GroupNorm and "batch normalization" (3.3); the ``dsconv_bn`` ablation
  stem is a BatchNorm whatever ``norm`` says.
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
  into the kernels in the order the model creates them (:mod:`limijax.kernels.init`).
* Input channels: 1 (grey); NUDT-SIRST's RGB files carry a grey image and are read as one.

Ablations (paper Table 2): ``stem='dsconv_bn'`` (w/o SES: depthwise-separable conv
1 -> 8 + BatchNorm + ReLU, the stem's only normalisation; everything after it keeps
GroupNorm), ``block='residual'`` (w/o LMB: plain residual blocks of two 3x3
convolutions), ``upsampler='bilinear'`` (w/o HUF: bilinear x2 then a
depthwise-separable conv, no DSTC stream) and ``head='fpn'`` (w/o C2F: the same
multi-scale FPN-style head, no label-smoothed side supervision).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from limijax.architecture import (BLOCKS, BN_EPS, BN_MOMENTUM_FLAX, HEADS, NORMS, PRIOR_BIAS,
                                  STEMS, STRIDE, UPSAMPLERS)
from limijax.errors import ConfigError, UserError
from limijax.kernels import depthwise
# The model's initialisation, and the pieces of the kernels others reach through the model.
from limijax.kernels.init import init, init_compiler_options, init_device  # noqa: F401
from limijax.kernels.layers import (BILINEAR_FORMS, NORM_FORMS, POINTWISE_FORMS, DepthwiseConv,
                                    DepthwiseConvTranspose, Forms, OneChannelConv, Pointwise,
                                    SeparableKernels, avg_pool2, conv_init, upsample,
                                    upsample_bilinear, upsample_separable_conv)
from limijax.kernels.norm import GN_EPS, broadcast_hw, gn, num_groups, spatial_sums  # noqa: F401
from limijax.kernels.valid import (Valid, replicate_valid_edge, size_of, valid_masks,  # noqa: F401
                                   zero_invalid)

# The config keys that choose a variant, and their values.
CHOICES = (('stem', STEMS), ('block', BLOCKS), ('upsampler', UPSAMPLERS), ('head', HEADS),
           ('norm', NORMS), ('depthwise', depthwise.IMPLS))


class InputShapeError(UserError, ValueError):
  """The input is not (N, H, W, C) with H, W multiples of 16 and the expected C."""


def group_norm(x, name: str, forms: Forms, valid: Valid | None = None):
  """Limi-Net's GroupNorm of ``x`` (:func:`limijax.kernels.norm.num_groups` groups, eps
  1e-5) in the form of ``forms``, under ``name``."""
  if forms.groupnorm == 'flax':
    if valid is not None:
      raise ValueError("the 'flax' GroupNorm form has no valid_hw")
    return nn.GroupNorm(num_groups=num_groups(x.shape[-1]), epsilon=GN_EPS, name=name)(x)
  return gn(x.shape[-1], name)(x, valid)


@dataclasses.dataclass(frozen=True)
class Norm:
  """The normalisation after the convolutions of the blocks outside SES (``model.norm``):
  ``kind='group'``, Limi-Net's GroupNorm (:func:`group_norm`), or ``kind='batch'``, a
  BatchNorm (PyTorch's eps and momentum) under the same name with ``bn`` for ``gn``,
  normalising with the batch's statistics when ``train`` and with its running ones
  otherwise. SES keeps its GroupNorm either way (paper 3.2)."""
  kind: str = 'group'
  train: bool = False

  def __call__(self, x, name: str, forms: Forms, valid: Valid | None = None):
    if self.kind == 'group':
      return group_norm(x, name, forms, valid)
    x = nn.BatchNorm(use_running_average=not self.train, momentum=BN_MOMENTUM_FLAX,
                     epsilon=BN_EPS, name=name.replace('gn', 'bn'))(x)
    # its shift leaves values beyond each image's valid part, which later layers would
    # carry on: zeroed, as GroupNorm's are
    return zero_invalid(x, valid)


def pointwise(features: int, forms: Forms, use_bias: bool = False, name: str | None = None,
              bias_init=nn.initializers.zeros_init()) -> nn.Module:
  """A 1x1 convolution in the pointwise form of ``forms``."""
  return Pointwise(features, use_bias, bias_init, forms.pointwise, name=name)


class DSConv(nn.Module):
  """Depthwise-separable convolution: depthwise k x k (stride s), then pointwise.

  Always the two steps: as one dense k x k convolution (kernel ``dw * pw``) it is slower
  on a 2-core CPU for every shape in the model (BENCHMARKS.md)."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  use_bias: bool = False
  forms: Forms = Forms()

  @nn.compact
  def __call__(self, x, valid: Valid | None = None):
    # With valid, 0 past each image's border: after the depthwise conv or after the 1x1
    # conv (which keeps zeros when it has no bias), whichever has fewer channels.
    mask_after_pointwise = self.features <= x.shape[-1] and not self.use_bias
    x = DepthwiseConv(self.kernel_size, self.stride, self.forms.depthwise, name='dw')(x)
    if not mask_after_pointwise:
      x = zero_invalid(x, valid)
    x = pointwise(self.features, self.forms, self.use_bias, name='pw')(x)
    return zero_invalid(x, valid) if mask_after_pointwise else x


def eca_kernel_size(channels: int) -> int:
  t = int(abs(math.log2(channels) / 2 + 0.5))
  return t if t % 2 else t + 1


class ECA(nn.Module):
  """Efficient Channel Attention (ECA-Net): GAP, 1-D conv across channels, sigmoid, rescale."""

  @nn.compact
  def __call__(self, x, valid: Valid | None = None):
    c = x.shape[-1]
    k = eca_kernel_size(c)
    kernel = self.param('kernel', nn.initializers.normal(1.0 / math.sqrt(k)), (k,), jnp.float32)
    v = size_of(x, valid)
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
  forms: Forms = Forms()

  @nn.compact
  def __call__(self, x, valid: Valid | None = None):
    if x.shape[-1] == 1:  # a grey image: the same parameters, a faster form on CPU
      x = OneChannelConv(self.mid_features, impl=self.forms.depthwise, name='conv')(x)
    else:
      x = nn.Conv(self.mid_features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  kernel_init=conv_init, name='conv')(x)
    x = nn.relu(group_norm(zero_invalid(x, valid), 'gn1', self.forms, valid))
    x = DSConv(self.features, forms=self.forms, name='dsconv')(x, valid)
    x = nn.relu(group_norm(x, 'gn2', self.forms, valid))
    return ECA(name='eca')(x, valid)


class DSConvBNStem(nn.Module):
  """The "w/o SES" stem: depthwise-separable 3x3 conv + BatchNorm + ReLU."""
  features: int = 8
  forms: Forms = Forms()

  @nn.compact
  def __call__(self, x, train: bool, valid: Valid | None = None):
    x = DSConv(self.features, forms=self.forms, name='dsconv')(x, valid)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM_FLAX, epsilon=BN_EPS,
                     name='bn')(x)
    # BatchNorm's shift leaves values beyond the valid part, which the shortcuts of the
    # blocks would carry on: zeroed (GroupNorm does so everywhere else)
    return zero_invalid(nn.relu(x), valid)


class LMB(nn.Module):
  """Lightweight Multi-branch Bottleneck (Fig. 3c); halves H and W."""
  features: int
  kernel_sizes: Sequence[int] = (3, 7)
  bottleneck_ratio: float = 0.5
  forms: Forms = Forms()
  norm: Norm = Norm()

  @nn.compact
  def __call__(self, x, valid: Valid | None = None):
    mid = max(1, int(self.features * self.bottleneck_ratio))
    y = nn.relu(self.norm(pointwise(mid, self.forms, name='reduce')(x), 'reduce_gn', self.forms,
                          valid))
    branches = []
    for i, k in enumerate(self.kernel_sizes):
      b = DSConv(mid, kernel_size=k, stride=2, forms=self.forms, name=f'branch{i}')(y, valid)
      branches.append(nn.relu(self.norm(b, f'branch{i}_gn', self.forms, valid)))
    y = jnp.concatenate(branches, axis=-1)
    y = self.norm(pointwise(self.features, self.forms, name='fuse')(y), 'fuse_gn', self.forms,
                  valid)
    y = ECA(name='eca')(y, valid)
    shortcut = avg_pool2(x)
    if x.shape[-1] != self.features:
      shortcut = pointwise(self.features, self.forms, name='shortcut')(shortcut)
    return nn.relu(y + shortcut)


class ResidualBlock(nn.Module):
  """The "w/o LMB" block: two 3x3 convs (the first with stride 2) + GN and a shortcut."""
  features: int
  forms: Forms = Forms()
  norm: Norm = Norm()

  @nn.compact
  def __call__(self, x, valid: Valid | None = None):
    y = nn.Conv(self.features, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                use_bias=False, kernel_init=conv_init, name='conv1')(x)
    y = nn.relu(self.norm(zero_invalid(y, valid), 'gn1', self.forms, valid))
    y = zero_invalid(nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                             kernel_init=conv_init, name='conv2')(y), valid)
    y = self.norm(y, 'gn2', self.forms, valid)
    shortcut = avg_pool2(x)
    if x.shape[-1] != self.features:
      shortcut = pointwise(self.features, self.forms, name='shortcut')(shortcut)
    return nn.relu(y + shortcut)


class HUF(nn.Module):
  """Hybrid Upsampling Fusion (Fig. 4a): DSTC + bilinear x2 of ``deep``, fused with ``skip``.

  With ``hybrid=False`` (the "w/o HUF" ablation) the deeper feature is upsampled by
  bilinear interpolation followed by a depthwise-separable convolution only.
  """
  features: int
  hybrid: bool = True
  forms: Forms = Forms()
  norm: Norm = Norm()

  @nn.compact
  def __call__(self, deep, skip, valid: Valid | None = None):
    if self.hybrid:
      dstc = DepthwiseConvTranspose(self.forms.depthwise, name='dstc_dw')(deep)
      dstc = pointwise(self.features, self.forms, name='dstc_pw')(dstc)
      bil = deep
      if deep.shape[-1] != self.features:
        bil = pointwise(self.features, self.forms, name='bilinear_proj')(bil)
      # 0 past each image's border: the sum at once (the 1x1 conv has no bias)
      up = zero_invalid(dstc + upsample(replicate_valid_edge(bil, valid), 2, self.forms), valid)
    else:
      up = DSConv(self.features, forms=self.forms, name='up_dsconv')(
          zero_invalid(upsample(replicate_valid_edge(deep, valid), 2, self.forms), valid), valid)
    y = pointwise(self.features, self.forms, name='fuse')(jnp.concatenate([up, skip], axis=-1))
    return nn.relu(self.norm(y, 'fuse_gn', self.forms, valid))


class FastUp(nn.Module):
  """FastUp (Fig. 4b): bilinear x``factor``, then a depthwise-separable 3x3 conv.

  With the ``shift`` depthwise form (``auto`` on a CPU) the upsampling is folded into the
  convolutions (:func:`limijax.kernels.layers.upsample_separable_conv`: one dense conv at
  the input resolution, never the upsampled tensor); ``grouped`` computes the literal
  sequence. Same parameters either way.
  """
  factor: int
  features: int = 4
  forms: Forms = Forms()
  norm: Norm = Norm()

  @nn.compact
  def __call__(self, x, valid: Valid | None = None):
    if (depthwise.resolve_impl(self.forms.depthwise) == 'grouped'
        or self.forms.bilinear == 'resize'):
      x = DSConv(self.features, forms=self.forms, name='dsconv')(
          zero_invalid(upsample(replicate_valid_edge(x, valid), self.factor, self.forms), valid),
          valid)
    else:
      dw, pw = SeparableKernels(self.features, name='dsconv')(x.shape[-1])
      x = upsample_separable_conv(x, dw, pw, self.factor, self.forms, valid)
    return nn.relu(self.norm(zero_invalid(x, valid), 'gn', self.forms, valid))


class SegmentHead(nn.Module):
  """Segment head (Fig. 4c): depthwise-separable 3x3 + GN + ReLU, then 1x1 to one logit."""
  features: int = 8
  forms: Forms = Forms()
  norm: Norm = Norm()

  @nn.compact
  def __call__(self, x, valid: Valid | None = None):
    x = DSConv(self.features, forms=self.forms, name='dsconv')(x, valid)
    x = nn.relu(self.norm(x, 'gn', self.forms, valid))
    return pointwise(1, self.forms, use_bias=True,
                     bias_init=nn.initializers.constant(PRIOR_BIAS), name='logit')(x)


class LimiNet(nn.Module):
  """Limi-Net: Lightweight Stable Encoder + Coarse-to-fine Hybrid Upsampling Decoder.

  ``depthwise``, ``pointwise``, ``groupnorm`` and ``bilinear`` choose how the layers
  compute (:class:`Forms`), never the parameters: ``model.clone(pointwise='matmul')`` is
  the same network for ``vmap``, ``LimiNet(depthwise='grouped', groupnorm='flax',
  bilinear='resize')`` the plain reference."""
  channels: Sequence[int] = (8, 16, 32, 32)
  stem_channels: int = 4  # SES's first (standard) conv; its DSConv raises to channels[0]
  in_channels: int = 1
  fastup_channels: int = 4
  head_channels: int = 8
  stem: str = 'ses'
  block: str = 'lmb'
  upsampler: str = 'huf'
  head: str = 'c2f'
  norm: str = 'group'
  depthwise: str = 'auto'
  pointwise: str = 'conv'
  groupnorm: str = 'fast'
  bilinear: str = 'stencil'

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
    for key, allowed in (*CHOICES, ('pointwise', POINTWISE_FORMS), ('groupnorm', NORM_FORMS),
                         ('bilinear', BILINEAR_FORMS)):
      if getattr(self, key) not in allowed:
        raise ValueError(f'LimiNet.{key} must be one of {allowed}, got {getattr(self, key)!r}')
    valid = None
    if valid_hw is not None:
      if train:
        raise ValueError('valid_hw is for inference only (train=False)')
      valid_hw = jnp.asarray(valid_hw, jnp.int32)
      if valid_hw.shape != (x.shape[0], 2):
        raise ValueError(f'valid_hw must be ({x.shape[0]}, 2), got {valid_hw.shape}')
      valid = Valid(valid_hw, x.shape[1], valid_masks)
    x = zero_invalid(x, valid)  # whatever the padding beyond the valid part held
    forms = Forms(self.depthwise, self.pointwise, self.groupnorm, self.bilinear)
    norm = Norm(self.norm, train)
    c1, c2, c3, c4 = self.channels
    # --- Lightweight Stable Encoder (3.3) ---
    if self.stem == 'ses':
      e0 = SES(c1, self.stem_channels, forms, name='ses')(x, valid)
    else:
      e0 = DSConvBNStem(c1, forms, name='stem_dsconv_bn')(x, train, valid)
    if self.block == 'lmb':
      blocks = [LMB(c, forms=forms, norm=norm, name=f'lmb{i + 1}')
                for i, c in enumerate(self.channels)]
    else:
      blocks = [ResidualBlock(c, forms, norm, name=f'res{i + 1}')
                for i, c in enumerate(self.channels)]
    e1 = blocks[0](e0, valid)  # 1/2
    e2 = blocks[1](e1, valid)  # 1/4
    e3 = blocks[2](e2, valid)  # 1/8
    e4 = blocks[3](e3, valid)  # 1/16
    # --- Coarse-to-fine Hybrid Upsampling Decoder (3.4) ---
    hybrid = self.upsampler == 'huf'
    d3 = HUF(c3, hybrid, forms, norm, name='huf1')(e4, e3, valid)  # 1/8
    d2 = HUF(c2, hybrid, forms, norm, name='huf2')(d3, e2, valid)  # 1/4
    d1 = HUF(c1, hybrid, forms, norm, name='huf3')(d2, e1, valid)  # 1/2
    d0 = HUF(c1, hybrid, forms, norm, name='huf4')(d1, e0, valid)  # 1/1
    fu = self.fastup_channels
    f3 = FastUp(8, fu, forms, norm, name='fastup8')(d3, valid)
    f2 = FastUp(4, fu, forms, norm, name='fastup4')(d2, valid)
    f1 = FastUp(2, fu, forms, norm, name='fastup2')(d1, valid)
    final = SegmentHead(self.head_channels, forms, norm, name='head')(
        jnp.concatenate([f3, f2, f1, d0], axis=-1), valid)
    if not train:
      return final
    if self.head == 'fpn':
      return final, ()
    # C2F side heads (3.4, Fig. 4c; training only): an independent SegmentHead on each
    # HUF output brought to full resolution, coarsest (x8) first, the order of
    # loss.side_alphas.
    sides = tuple(SegmentHead(self.head_channels, forms, norm, name=f'side{i}')(f)
                  for i, f in enumerate((f3, f2, f1, d0)))
    return final, sides


def check_config(model_cfg) -> None:
  """Raise :class:`ConfigError` naming the first ``model.*`` key that cannot build a model."""
  channels = tuple(model_cfg.channels)
  if len(channels) != 4 or not all(isinstance(c, int) and c > 0 for c in channels):
    raise ConfigError('model.channels', f'needs four positive integers, got {channels!r}')
  if not (isinstance(model_cfg.stem_channels, int) and model_cfg.stem_channels > 0):
    raise ConfigError('model.stem_channels', f'must be a positive integer, got '
                      f'{model_cfg.stem_channels!r}')
  for key, allowed in CHOICES:
    if model_cfg[key] not in allowed:
      raise ConfigError(f'model.{key}', f'must be one of {", ".join(allowed)}; '
                        f'got {model_cfg[key]!r}')


def from_config(config, in_channels: int | None = None) -> LimiNet:
  """Build the model from a run config (``config.model`` and ``config.data.in_channels``)."""
  return from_model_config({**config.model.to_dict(),
                            'in_channels': in_channels or config.data.in_channels})


def from_model_config(m) -> LimiNet:
  """Build the model from the plain dict an export stores (the architecture keys and
  ``in_channels``; ``norm`` and ``depthwise``, when absent, read as their defaults)."""
  return LimiNet(
      channels=tuple(m['channels']), stem_channels=m['stem_channels'],
      in_channels=m['in_channels'], stem=m['stem'], block=m['block'],
      upsampler=m['upsampler'], head=m['head'], norm=m.get('norm', 'group'),
      depthwise=m.get('depthwise', 'auto'))


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
