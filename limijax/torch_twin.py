"""Limi-Net in plain PyTorch: the twin of :mod:`limijax.model`, NCHW.

Every block of the flax model has a ``torch.nn`` counterpart here, with the same
submodule names, so that a flax parameter path maps to a PyTorch ``state_dict`` key by a
fixed rule (``/`` becomes ``.``; ``kernel`` and ``scale`` become ``weight``; the
BatchNorm statistics ``mean``/``var`` become ``running_mean``/``running_var``): flax
``params/ses/conv/kernel`` is ``ses.conv.weight``, ``params/lmb1/eca/kernel`` is
``lmb1.eca.weight``. :mod:`limijax.torch_convert` converts weights both ways.

* depthwise convolutions are ``nn.Conv2d(C, C, k, groups=C)``, the depthwise stride-2
  transposed convolution of HUF is ``nn.ConvTranspose2d(C, C, 4, stride=2, padding=1,
  groups=C)``, ECA *is* an ``nn.Conv1d(1, 1, k, padding=k // 2, bias=False)`` (its
  weight is the 1-D kernel), GroupNorm has the flax model's groups and eps 1e-5, the
  ``dsconv_bn`` ablation stem is ``nn.BatchNorm2d`` (eps 1e-5, momentum 0.1);
* bilinear upsampling is ``F.interpolate(mode='bilinear', align_corners=False)``;
* ``model.eval()`` computes the flax inference function (``train=False``): the final
  logits, ``(N, 1, H, W)``; in ``model.train()`` the forward pass returns ``(final,
  sides)`` as flax's ``train=True`` does, the four C2F side logits coarsest first (an
  empty tuple for ``head='fpn'``), and the BatchNorm stem normalises with batch
  statistics and updates its running ones.

This module imports torch and never JAX: a PyTorch-only environment can load an
exported ``.pt`` with it (see the README). The rest of limijax never imports torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from limijax.architecture import (BLOCKS, BN_EPS, GN_EPS, HEADS, MODEL_KEYS, NORMS,  # noqa: F401
                                  PRIOR_BIAS, STEMS, STRIDE, UPSAMPLERS)
from limijax.architecture import BN_MOMENTUM_TORCH as BN_MOMENTUM


def _mean_hw(x: torch.Tensor, dims: int) -> torch.Tensor:
  """Mean over the last ``dims`` axes, one axis at a time, keeping them (size 1)."""
  for d in range(x.dim() - 1, x.dim() - 1 - dims, -1):
    x = x.mean(dim=d, keepdim=True)
  return x


class GroupNorm(nn.GroupNorm):
  """``nn.GroupNorm``; exported to ONNX as explicit means, one axis at a time.

  PyTorch's GroupNorm exports as InstanceNormalization, which onnxruntime computes with
  single-pass float32 sums over whole planes: at 512x512 that costs ~3e-6 relative per
  layer, enough to move the final logits by 1e-4. Means taken one axis at a time (a few
  hundred values each) keep the graph as exact as PyTorch's own kernel.
  """

  def forward(self, x):
    if not torch.onnx.is_in_onnx_export():
      return super().forward(x)
    n, c, h, w = x.shape
    g = x.reshape(n, self.num_groups, c // self.num_groups, h, w)
    d = g - _mean_hw(g, 3)
    y = (d / torch.sqrt(_mean_hw(d * d, 3) + self.eps)).reshape(n, c, h, w)
    return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def gn(channels: int) -> GroupNorm:
  return GroupNorm(min(4, max(1, channels // 2)), channels, eps=GN_EPS)


class Normed(nn.Module):
  """A block whose convolutions are followed by the norm of ``model.norm``: GroupNorm
  (:func:`gn`) under the flax model's names (``reduce_gn``, ``gn``, ...), or
  ``nn.BatchNorm2d`` (eps 1e-5, momentum 0.1) under the same names with ``bn`` for ``gn``."""

  def __init__(self, norm: str = 'group'):  # checked by LimiNetTorch, with the other choices
    super().__init__()
    self.norm_kind = norm

  def _name(self, name: str) -> str:
    return name if self.norm_kind == 'group' else name.replace('gn', 'bn')

  def add_norm(self, name: str, channels: int) -> None:
    layer = (gn(channels) if self.norm_kind == 'group'
             else nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM))
    setattr(self, self._name(name), layer)

  def norm(self, name: str) -> nn.Module:
    return getattr(self, self._name(name))


def depthwise(channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(channels, channels, kernel_size, stride=stride, padding=kernel_size // 2,
                   groups=channels, bias=False)


def pointwise(cin: int, cout: int, bias: bool = False) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 1, bias=bias)


def upsample_bilinear(x: torch.Tensor, factor: int) -> torch.Tensor:
  if factor == 1:
    return x
  return F.interpolate(x, scale_factor=factor, mode='bilinear', align_corners=False)


def eca_kernel_size(channels: int) -> int:
  t = int(abs(math.log2(channels) / 2 + 0.5))
  return t if t % 2 else t + 1


class DSConv(nn.Module):
  """Depthwise k x k (stride s), then pointwise: ``dw``, ``pw``."""

  def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1,
               bias: bool = False):
    super().__init__()
    self.dw = depthwise(cin, kernel_size, stride)
    self.pw = pointwise(cin, cout, bias)

  def forward(self, x):
    return self.pw(self.dw(x))


class ECA(nn.Conv1d):
  """Efficient Channel Attention: GAP, the 1-D conv across channels (this module's own
  weight, ``(1, 1, k)``), sigmoid, rescale."""

  def __init__(self, channels: int):
    k = eca_kernel_size(channels)
    super().__init__(1, 1, k, padding=k // 2, bias=False)

  def forward(self, x):
    y = _mean_hw(x, 2)[:, None, :, 0, 0]  # (N, 1, C); one axis at a time, see GroupNorm
    z = F.conv1d(y, self.weight, None, padding=self.padding)[:, 0]  # (N, C)
    return x * torch.sigmoid(z)[:, :, None, None]


class SES(nn.Module):
  def __init__(self, cin: int, features: int = 8, mid_features: int = 4):
    super().__init__()
    self.conv = nn.Conv2d(cin, mid_features, 3, padding=1, bias=False)
    self.gn1 = gn(mid_features)
    self.dsconv = DSConv(mid_features, features)
    self.gn2 = gn(features)
    self.eca = ECA(features)

  def forward(self, x):
    x = F.relu(self.gn1(self.conv(x)))
    x = F.relu(self.gn2(self.dsconv(x)))
    return self.eca(x)


class DSConvBNStem(nn.Module):
  def __init__(self, cin: int, features: int = 8):
    super().__init__()
    self.dsconv = DSConv(cin, features)
    self.bn = nn.BatchNorm2d(features, eps=BN_EPS, momentum=BN_MOMENTUM)

  def forward(self, x):
    return F.relu(self.bn(self.dsconv(x)))


class LMB(Normed):
  def __init__(self, cin: int, features: int, kernel_sizes=(3, 7),
               bottleneck_ratio: float = 0.5, norm: str = 'group'):
    super().__init__(norm)
    mid = max(1, int(features * bottleneck_ratio))
    self.kernel_sizes = tuple(kernel_sizes)
    self.reduce = pointwise(cin, mid)
    self.add_norm('reduce_gn', mid)
    for i, k in enumerate(self.kernel_sizes):
      setattr(self, f'branch{i}', DSConv(mid, mid, k, stride=2))
      self.add_norm(f'branch{i}_gn', mid)
    self.fuse = pointwise(mid * len(self.kernel_sizes), features)
    self.add_norm('fuse_gn', features)
    self.eca = ECA(features)
    self.shortcut = pointwise(cin, features) if cin != features else None

  def forward(self, x):
    y = F.relu(self.norm('reduce_gn')(self.reduce(x)))
    branches = [F.relu(self.norm(f'branch{i}_gn')(getattr(self, f'branch{i}')(y)))
                for i in range(len(self.kernel_sizes))]
    y = self.eca(self.norm('fuse_gn')(self.fuse(torch.cat(branches, dim=1))))
    shortcut = F.avg_pool2d(x, 2)
    if self.shortcut is not None:
      shortcut = self.shortcut(shortcut)
    return F.relu(y + shortcut)


class ResidualBlock(Normed):
  def __init__(self, cin: int, features: int, norm: str = 'group'):
    super().__init__(norm)
    self.conv1 = nn.Conv2d(cin, features, 3, stride=2, padding=1, bias=False)
    self.add_norm('gn1', features)
    self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)
    self.add_norm('gn2', features)
    self.shortcut = pointwise(cin, features) if cin != features else None

  def forward(self, x):
    y = F.relu(self.norm('gn1')(self.conv1(x)))
    y = self.norm('gn2')(self.conv2(y))
    shortcut = F.avg_pool2d(x, 2)
    if self.shortcut is not None:
      shortcut = self.shortcut(shortcut)
    return F.relu(y + shortcut)


class HUF(Normed):
  """Hybrid Upsampling Fusion; ``hybrid=False`` is the "w/o HUF" ablation."""

  def __init__(self, cdeep: int, cskip: int, features: int, hybrid: bool = True,
               norm: str = 'group'):
    super().__init__(norm)
    self.hybrid = hybrid
    if hybrid:
      self.dstc_dw = nn.ConvTranspose2d(cdeep, cdeep, 4, stride=2, padding=1, groups=cdeep,
                                        bias=False)
      self.dstc_pw = pointwise(cdeep, features)
      self.bilinear_proj = pointwise(cdeep, features) if cdeep != features else None
    else:
      self.up_dsconv = DSConv(cdeep, features)
    self.fuse = pointwise(features + cskip, features)
    self.add_norm('fuse_gn', features)

  def forward(self, deep, skip):
    if self.hybrid:
      dstc = self.dstc_pw(self.dstc_dw(deep))
      bil = deep if self.bilinear_proj is None else self.bilinear_proj(deep)
      up = dstc + upsample_bilinear(bil, 2)
    else:
      up = self.up_dsconv(upsample_bilinear(deep, 2))
    return F.relu(self.norm('fuse_gn')(self.fuse(torch.cat([up, skip], dim=1))))


class FastUp(Normed):
  def __init__(self, cin: int, factor: int, features: int = 4, norm: str = 'group'):
    super().__init__(norm)
    self.factor = factor
    self.dsconv = DSConv(cin, features)
    self.add_norm('gn', features)

  def forward(self, x):
    return F.relu(self.norm('gn')(self.dsconv(upsample_bilinear(x, self.factor))))


class SegmentHead(Normed):
  def __init__(self, cin: int, features: int = 8, norm: str = 'group'):
    super().__init__(norm)
    self.dsconv = DSConv(cin, features)
    self.add_norm('gn', features)
    self.logit = nn.Conv2d(features, 1, 1, bias=True)

  def forward(self, x):
    return self.logit(F.relu(self.norm('gn')(self.dsconv(x))))


class LimiNetTorch(nn.Module):
  """Limi-Net (every ablation variant) in PyTorch; the arguments are flax ``LimiNet``'s."""

  def __init__(self, channels=(8, 16, 32, 32), stem_channels: int = 4, in_channels: int = 1,
               fastup_channels: int = 4, head_channels: int = 8, stem: str = 'ses',
               block: str = 'lmb', upsampler: str = 'huf', head: str = 'c2f',
               norm: str = 'group'):
    super().__init__()
    for name, value, allowed in (('stem', stem, STEMS), ('block', block, BLOCKS),
                                 ('upsampler', upsampler, UPSAMPLERS), ('head', head, HEADS),
                                 ('norm', norm, NORMS)):
      if value not in allowed:
        raise ValueError(f'model.{name} must be one of {allowed}, got {value!r}')
    channels = tuple(int(c) for c in channels)
    if len(channels) != 4:
      raise ValueError(f'model.channels needs four integers, got {channels!r}')
    self.channels, self.in_channels = channels, int(in_channels)
    self.stem_kind, self.block_kind, self.upsampler_kind, self.head_kind, self.norm_kind = (
        stem, block, upsampler, head, norm)
    c1, c2, c3, c4 = channels
    # --- encoder: the stem and the four blocks under the flax model's names ---
    if stem == 'ses':
      self.ses = SES(in_channels, c1, stem_channels)
      self._stem_name = 'ses'
    else:
      self.stem_dsconv_bn = DSConvBNStem(in_channels, c1)
      self._stem_name = 'stem_dsconv_bn'
    prefix = 'lmb' if block == 'lmb' else 'res'
    cls = LMB if block == 'lmb' else ResidualBlock
    self._block_names = []
    cin = c1
    for i, c in enumerate(channels):
      setattr(self, f'{prefix}{i + 1}', cls(cin, c, norm=norm))
      self._block_names.append(f'{prefix}{i + 1}')
      cin = c
    # --- decoder ---
    hybrid = upsampler == 'huf'
    self.huf1 = HUF(c4, c3, c3, hybrid, norm)
    self.huf2 = HUF(c3, c2, c2, hybrid, norm)
    self.huf3 = HUF(c2, c1, c1, hybrid, norm)
    self.huf4 = HUF(c1, c1, c1, hybrid, norm)
    self.fastup8 = FastUp(c3, 8, fastup_channels, norm)
    self.fastup4 = FastUp(c2, 4, fastup_channels, norm)
    self.fastup2 = FastUp(c1, 2, fastup_channels, norm)
    self.head = SegmentHead(3 * fastup_channels + c1, head_channels, norm)
    # --- C2F side heads (training only) ---
    self._side_names = []
    if head == 'c2f':
      for i, cin in enumerate((fastup_channels, fastup_channels, fastup_channels, c1)):
        setattr(self, f'side{i}', SegmentHead(cin, head_channels, norm))
        self._side_names.append(f'side{i}')

  @classmethod
  def from_config(cls, config: Any, in_channels: int | None = None) -> 'LimiNetTorch':
    """Build from a run config (``config.model`` and ``config.data.in_channels``) or from
    the plain model-config dict an export stores (:func:`model_config`)."""
    m = model_config(config, in_channels)
    return cls(channels=tuple(m['channels']), stem_channels=m['stem_channels'],
               in_channels=m['in_channels'], stem=m['stem'], block=m['block'],
               upsampler=m['upsampler'], head=m['head'], norm=m['norm'])

  def check_input(self, x: torch.Tensor) -> None:
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
      return
    ok = (x.dim() == 4 and x.shape[1] == self.in_channels and x.shape[2] > 0
          and x.shape[3] > 0 and x.shape[2] % STRIDE == 0 and x.shape[3] % STRIDE == 0)
    if not ok:
      raise ValueError(f'Limi-Net expects input of shape (N, {self.in_channels}, H, W) with '
                       f'H and W multiples of {STRIDE}; got {tuple(x.shape)}')

  def forward(self, x: torch.Tensor):
    self.check_input(x)
    e0 = getattr(self, self._stem_name)(x)
    e1, e2, e3, e4 = _chain(e0, [getattr(self, n) for n in self._block_names])
    d3 = self.huf1(e4, e3)
    d2 = self.huf2(d3, e2)
    d1 = self.huf3(d2, e1)
    d0 = self.huf4(d1, e0)
    f3, f2, f1 = self.fastup8(d3), self.fastup4(d2), self.fastup2(d1)
    final = self.head(torch.cat([f3, f2, f1, d0], dim=1))
    if not self.training:
      return final
    sides = tuple(getattr(self, n)(f) for n, f in zip(self._side_names, (f3, f2, f1, d0)))
    return final, sides


def _chain(x, blocks):
  outs = []
  for b in blocks:
    x = b(x)
    outs.append(x)
  return outs


def model_config(config: Any, in_channels: int | None = None) -> dict:
  """The plain dict of the architecture keys (:data:`MODEL_KEYS`, plus ``depthwise``
  when present) from a run config (``config.model`` + ``config.data.in_channels``) or
  from such a dict itself; lists for tuples, so that it serialises as JSON."""
  if _has(config, 'model'):
    m = dict(config['model'].items())
    if in_channels is None:
      in_channels = config['data']['in_channels'] if _has(config, 'data') else 1
  else:
    m = dict(config.items())
  if in_channels is not None:
    m['in_channels'] = int(in_channels)
  m.setdefault('in_channels', 1)
  m.setdefault('norm', 'group')  # exported before model.norm existed
  missing = [k for k in MODEL_KEYS if k not in m]
  if missing:
    raise KeyError(f'model config lacks {", ".join(missing)}')
  out = {k: m[k] for k in MODEL_KEYS}
  if 'depthwise' in m:
    out['depthwise'] = m['depthwise']
  out['channels'] = [int(c) for c in out['channels']]
  return out


def _has(config, key) -> bool:
  try:
    return key in config
  except TypeError:
    return False


def build(config: Any, in_channels: int | None = None) -> LimiNetTorch:
  """``LimiNetTorch.from_config``."""
  return LimiNetTorch.from_config(config, in_channels)


class Normalised(nn.Module):
  """``model((x - mean) / std)``: the twin taking raw 0..255 grey, as an exported ONNX
  graph with ``--with_normalisation`` does."""

  def __init__(self, model: nn.Module, mean: float, std: float):
    super().__init__()
    self.model = model
    self.register_buffer('mean', torch.tensor(float(mean), dtype=torch.float32))
    self.register_buffer('std', torch.tensor(float(std), dtype=torch.float32))

  def forward(self, x):
    return self.model((x - self.mean) / self.std)


# --------------------------------------------------------------------------- loss
def c2f_loss(final, sides, y, loss_cfg):
  """The C2F loss (paper eq. 1-4) of :func:`limijax.losses.loss_from_config` in torch (NCHW
  logits): the same total and per-scale terms (``final``, ``side0`` ...), to float32
  rounding. ``loss_cfg`` is the config's ``loss`` block."""
  eps = float(loss_cfg.dice_eps)

  def scale(logits, alpha):
    t = y * (1.0 - alpha) + (1.0 - y) * alpha  # eq. (1)
    sce = -torch.mean(t * F.logsigmoid(logits) + (1.0 - t) * F.logsigmoid(-logits))  # eq. (2)
    p = torch.sigmoid(logits)
    dice = 1.0 - (2.0 * torch.sum(p * y) + eps) / (torch.sum(p) + torch.sum(y) + eps)  # eq. (3)
    return loss_cfg.lambda_sce * sce + loss_cfg.lambda_dice * dice

  base = float(loss_cfg.weight_base)
  alphas = tuple(loss_cfg.side_alphas)
  if sides and len(sides) != len(alphas):
    raise ValueError(f'{len(sides)} side outputs but {len(alphas)} side alphas')
  terms = {'final': base ** (-loss_cfg.final_alpha) * scale(final, loss_cfg.final_alpha)}
  for i, (logits, alpha) in enumerate(zip(sides, alphas)):
    terms[f'side{i}'] = base ** (-alpha) * scale(logits, alpha)  # eq. (4)
  return sum(terms.values()), terms
