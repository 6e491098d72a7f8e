"""Infrared Target Simulator (ITS), paper section 3.2.

Real infrared small targets are rare, so negative pixels dominate training. ITS paints
extra pseudo targets into a training crop and writes them into its mask. Following the
paper, each pseudo target:

* has a random shape: a point, a circle, or an irregular polygon around a centre;
* has a random size and position, and does not overlap an existing target;
* is brightest at its centre and dims towards its rim;
* takes its intensity from the local background: its peak sits ``contrast * 255`` above
  the mean of a window around it, so it is brighter than its surroundings (unless the
  background is already near 255, where it is clipped).

:func:`add_pseudo_targets` is the pure numpy operation; :class:`ITS` wraps it as a Grain
``RandomMap``. :mod:`limijax.input_pipeline` places it after the seeded shuffle and the
crop/flip and before normalisation, ``batch`` and the final ``repeat``; since ``repeat``
hands the stages before it the global sample index, a training sample's pseudo targets
depend only on (seed, epoch, position in the epoch).

The paper gives no distributions; ours are: shape uniform over the three kinds; radius
uniform in [min_size, max_size] (points 0.5 to min(min_size, 1.5) px); polygons with
4-8 vertices; a Gaussian-like radial falloff; 1..max_targets targets per picked image.

Negatives (not in the paper; off by default): with ``line_prob`` an image also gets
1..``max_lines`` bright thin lines (16-64 px long, 1-3 px wide, at any angle, as bright
over their background as the pseudo targets) painted as *background*, the mask
unchanged: power lines, wires and edges against the sky are where a model trained on
NUAA-SIRST fires falsely.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import grain
import numpy as np
from scipy import ndimage

from limijax.errors import ConfigError

SHAPES = ('point', 'circle', 'polygon')

# Profile inside a target: exp(-FALLOFF * (d / r)**2) with d the distance to the centre
# and r the target's radius; a rim pixel keeps about 30% of the peak's contrast, which
# gives the "bright centre, dimmer periphery" look of section 3.2 without a hard step.
_FALLOFF = 1.2
# Gap in pixels kept between a new pseudo target and any target already in the mask.
_GAP = 2
# Placement attempts per pseudo target before giving up on it (the crop may be crowded).
_TRIES = 10
# Bright lines painted as background (``line_prob``): length and width ranges, pixels.
LINE_LENGTH = (16.0, 64.0)
LINE_WIDTH = (1.0, 3.0)


@dataclasses.dataclass(frozen=True)
class ITSConfig:
  """The ``data.its`` block of the config (see ``limijax.defaults``)."""

  enabled: bool = True
  prob: float = 0.5
  max_targets: int = 3
  min_size: float = 1.0
  max_size: float = 5.0
  min_contrast: float = 0.15
  max_contrast: float = 0.6
  line_prob: float = 0.0
  max_lines: int = 2

  @classmethod
  def from_any(cls, cfg: Any) -> 'ITSConfig':
    """Build from a ConfigDict, a mapping, an ITSConfig or None (None = disabled)."""
    if cfg is None:
      return cls(enabled=False)
    if isinstance(cfg, cls):
      return cfg
    get = cfg.get if isinstance(cfg, Mapping) else lambda k, d: getattr(cfg, k, d)
    fields = {f.name: get(f.name, f.default) for f in dataclasses.fields(cls)}
    out = cls(**fields)
    out.check()
    return out

  def check(self) -> None:
    """Raise :class:`ConfigError` naming the first ``data.its`` key out of its range."""
    if not 0.0 <= self.prob <= 1.0:
      raise ConfigError('data.its.prob', f'must be in [0, 1], got {self.prob}')
    if int(self.max_targets) != self.max_targets or self.max_targets < 1:
      raise ConfigError('data.its.max_targets', f'must be an integer >= 1, got {self.max_targets}')
    if not 0 < self.min_size:
      raise ConfigError('data.its.min_size', f'must be > 0, got {self.min_size}')
    if not self.min_size <= self.max_size:
      raise ConfigError('data.its.max_size', f'must be >= data.its.min_size '
                        f'({self.min_size}), got {self.max_size}')
    if not 0 <= self.min_contrast <= 1:
      raise ConfigError('data.its.min_contrast', f'must be in [0, 1], got {self.min_contrast}')
    if not self.min_contrast <= self.max_contrast <= 1:
      raise ConfigError('data.its.max_contrast', f'must be in [data.its.min_contrast '
                        f'({self.min_contrast}), 1], got {self.max_contrast}')
    if not 0.0 <= self.line_prob <= 1.0:
      raise ConfigError('data.its.line_prob', f'must be in [0, 1], got {self.line_prob}')
    if int(self.max_lines) != self.max_lines or self.max_lines < 1:
      raise ConfigError('data.its.max_lines', f'must be an integer >= 1, got {self.max_lines}')


def _inside_polygon(ys: np.ndarray, xs: np.ndarray, vy: np.ndarray,
                    vx: np.ndarray) -> np.ndarray:
  """Even-odd rule: True where pixel centre (ys, xs) lies inside the polygon (vy, vx)."""
  inside = np.zeros(np.broadcast_shapes(ys.shape, xs.shape), bool)
  for i in range(len(vy)):
    y0, x0, y1, x1 = vy[i - 1], vx[i - 1], vy[i], vx[i]
    crosses = (y0 > ys) != (y1 > ys)
    # x of the edge at height ys; the division is only used where the edge crosses ys,
    # so y1 != y0 there.
    with np.errstate(divide='ignore', invalid='ignore'):
      x_at = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
    inside ^= crosses & (xs < x_at)
  return inside


def _shape_support(shape: str, radius: float, cy: float, cx: float, ys: np.ndarray,
                   xs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Boolean support of one pseudo target on the pixel grid (ys[:, None], xs[None])."""
  dy, dx = ys[:, None] - cy, xs[None, :] - cx
  if shape == 'polygon':
    # An irregular polygon, star-shaped around the centre: 4-8 vertices at jittered,
    # roughly even angles and radii between half and all of `radius`, so the outline is
    # irregular but never self-intersecting nor a thin sliver.
    k = int(rng.integers(4, 9))
    ang = (np.arange(k) + rng.uniform(-0.3, 0.3, k)) * (2.0 * np.pi / k)
    ang = ang + rng.uniform(0.0, 2.0 * np.pi)
    rad = radius * rng.uniform(0.5, 1.0, k)
    vy, vx = rad * np.sin(ang), rad * np.cos(ang)
    support = _inside_polygon(dy, dx, vy, vx)
  else:
    support = dy**2 + dx**2 <= radius**2
  # A small shape can fall between pixel centres: keep at least the nearest pixel.
  iy = int(np.clip(round(cy), ys[0], ys[-1])) - ys[0]
  ix = int(np.clip(round(cx), xs[0], xs[-1])) - xs[0]
  support[iy, ix] = True
  # On the pixel grid a shape can break into pieces; one target is one 4-connected blob.
  labels, _ = ndimage.label(support)
  support = labels == labels[iy, ix]
  return support


def _place_one(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
               cfg: ITSConfig) -> bool:
  """Paint one pseudo target into `image` and `mask` in place; False if none fitted."""
  h, w = image.shape
  shape = SHAPES[int(rng.integers(len(SHAPES)))]
  if shape == 'point':
    # Points are the one- to few-pixel targets common in IRSTD data.
    radius = float(rng.uniform(0.5, max(0.5, min(cfg.min_size, 1.5))))
  else:
    radius = float(rng.uniform(cfg.min_size, cfg.max_size))
  reach = int(np.ceil(radius))
  for _ in range(_TRIES):
    # Keep the whole shape inside the crop when the crop is big enough for it.
    cy = rng.uniform(min(radius, (h - 1) / 2), max(h - 1 - radius, (h - 1) / 2))
    cx = rng.uniform(min(radius, (w - 1) / 2), max(w - 1 - radius, (w - 1) / 2))
    y0, y1 = max(0, int(cy) - reach - _GAP), min(h, int(cy) + reach + _GAP + 2)
    x0, x1 = max(0, int(cx) - reach - _GAP), min(w, int(cx) + reach + _GAP + 2)
    if not mask[y0:y1, x0:x1].any():
      break
  else:
    return False

  ys, xs = np.arange(y0, y1), np.arange(x0, x1)
  support = _shape_support(shape, radius, cy, cx, ys, xs, rng)

  # Section 3.2: intensity from the local background. The window is a few radii wide so
  # its mean describes the surroundings rather than the pixels being replaced.
  half = 2 * reach + 3
  wy0, wy1 = max(0, int(cy) - half), min(h, int(cy) + half + 1)
  wx0, wx1 = max(0, int(cx) - half), min(w, int(cx) + half + 1)
  local_mean = float(image[wy0:wy1, wx0:wx1].mean())
  contrast = float(rng.uniform(cfg.min_contrast, cfg.max_contrast))

  d2 = (ys[:, None] - cy)**2 + (xs[None, :] - cx)**2
  profile = np.exp(-_FALLOFF * d2 / max(radius, 0.5)**2)
  # Normalise so the brightest pixel of the support gets the full contrast even when
  # the centre falls between pixels.
  profile = profile / profile[support].max()
  target = local_mean + contrast * 255.0 * profile
  patch = image[y0:y1, x0:x1]
  # max(): a pseudo target only brightens; a pixel already brighter than the target's
  # profile (background clutter) keeps its value.
  patch[support] = np.minimum(np.maximum(patch[support], target[support]), 255.0)
  mask[y0:y1, x0:x1][support] = 1
  return True


def _place_line(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                cfg: ITSConfig) -> bool:
  """Paint one bright thin line into ``image`` in place, as background (``mask`` is only
  read): a segment of LINE_LENGTH px at a random angle, LINE_WIDTH px wide, its ridge
  ``contrast * 255`` above the mean of the window around it, kept _GAP px away from every
  target. False if none fitted."""
  h, w = image.shape
  length = float(rng.uniform(*LINE_LENGTH))
  width = float(rng.uniform(*LINE_WIDTH))
  angle = float(rng.uniform(0.0, np.pi))
  dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
  cy, cx = float(rng.uniform(0, h - 1)), float(rng.uniform(0, w - 1))
  reach = int(np.ceil(width)) + 1
  y0 = max(0, int(min(cy - dy, cy + dy)) - reach)
  y1 = min(h, int(max(cy - dy, cy + dy)) + reach + 2)
  x0 = max(0, int(min(cx - dx, cx + dx)) - reach)
  x1 = min(w, int(max(cx - dx, cx + dx)) + reach + 2)
  if y0 >= y1 or x0 >= x1:
    return False
  ys, xs = np.arange(y0, y1)[:, None] - cy, np.arange(x0, x1)[None, :] - cx
  # distance of each pixel centre to the segment from -(dy, dx) to +(dy, dx)
  t = np.clip((ys * dy + xs * dx) / max(dy * dy + dx * dx, 1e-9), -1.0, 1.0)
  dist = np.hypot(ys - t * dy, xs - t * dx)
  support = dist <= width / 2 + 0.5
  near = ndimage.binary_dilation(mask[y0:y1, x0:x1] > 0, iterations=_GAP)
  if not support.any() or (support & near).any():
    return False
  local_mean = float(image[y0:y1, x0:x1].mean())
  contrast = float(rng.uniform(cfg.min_contrast, cfg.max_contrast))
  profile = np.exp(-_FALLOFF * (dist / max(width / 2 + 0.5, 0.5)) ** 2)
  target = local_mean + contrast * 255.0 * profile
  patch = image[y0:y1, x0:x1]
  patch[support] = np.minimum(np.maximum(patch[support], target[support]), 255.0)
  return True


def image_box(valid: np.ndarray | None, shape: tuple[int, int]) -> tuple[slice, slice]:
  """The rows and columns of the smallest box holding every True pixel of ``valid`` (the
  image's own pixels in a padded crop); the whole ``shape`` when ``valid`` is None."""
  if valid is None:
    return slice(0, shape[0]), slice(0, shape[1])
  rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
  if not rows.size:
    return slice(0, 0), slice(0, 0)
  return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def add_pseudo_targets(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                       cfg: Any, valid: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Add ITS pseudo targets (paper section 3.2) to one image.

  Args:
    image: float (H, W) on the 0..255 scale (a training crop before normalisation).
    mask: (H, W) in {0, 1}; the real targets.
    rng: the only source of randomness.
    cfg: ITS settings, anything :meth:`ITSConfig.from_any` accepts.
    valid: None, or bool (H, W), True on the image's own pixels: a crop of an image
      smaller than the crop is padded, and pseudo targets (and the background they are
      measured against) then stay inside the image's box, never on the padding. The
      random draws are the same as for an unpadded crop of the box's size.

  Returns:
    (image, mask): float32 and uint8 arrays; new arrays when targets (or lines, for the
    image) were added, the inputs unchanged (same objects) when ITS is disabled or this
    image was not picked.
  """
  cfg = ITSConfig.from_any(cfg)
  if not cfg.enabled:
    return image, mask
  # The draws for lines come after the targets' and only when line_prob > 0, so that
  # without lines every draw is what it always was.
  box = image_box(valid, np.shape(image))
  targets = cfg.prob > 0 and rng.random() < cfg.prob
  if targets:
    image = np.array(image, dtype=np.float32)
    mask = np.array(mask, dtype=np.uint8)
    count = int(rng.integers(1, cfg.max_targets + 1))
    if image[box].size:
      for _ in range(count):
        _place_one(image[box], mask[box], rng, cfg)  # views: painted into image and mask
  if cfg.line_prob > 0 and rng.random() < cfg.line_prob:
    if not targets:
      image = np.array(image, dtype=np.float32)
    count = int(rng.integers(1, cfg.max_lines + 1))
    if image[box].size:
      for _ in range(count):
        _place_line(image[box], mask[box], rng, cfg)  # painted into image only
  return image, mask


class ITS(grain.transforms.RandomMap):
  """Grain transform: ITS on a record's ``image`` and ``mask`` (other keys kept)."""

  def __init__(self, cfg: Any):
    self.cfg = ITSConfig.from_any(cfg)

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    if not self.cfg.enabled:
      return element
    image, mask = add_pseudo_targets(element['image'], element['mask'], rng, self.cfg,
                                     valid=element.get('valid'))
    return {**element, 'image': image, 'mask': mask}
