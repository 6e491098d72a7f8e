"""A synthetic infrared small-target dataset, made from a seed with nothing to download.

The public IRSTD datasets cannot be shipped with the code, so the default experiment
and the tests run on scenes drawn here. The scenes are built to be *hard for a
classical detector but learnable*: the clutter is full of small bright structures that
a white top-hat fires on (sharp-edged spots, corners, windows, dot clusters, bars, thin
lines, cloud rims, ridges, a warm horizon, hot pixels), while the true targets differ
from them by local shape and context: a smooth, compact, near-isotropic Gaussian spot.

One image is composed in grey levels (0..255) in this order:

1. sky: a gradient and power-law ("fractal") noise, with clouds soft-thresholded from
   another power-law field, carrying fine texture and thin bright rims;
2. terrain, in 70% of images: a wavy horizon (often with a warm edge line), rough
   textured ground with bright ridge lines, and building-like rectangles, some with a
   grid of lit windows;
3. point clutter (squares, bars, crosses, flat discs, corners, dot clusters, textured
   patches) and thin lines, their contrasts drawn from the targets' law at a fraction
   of its strength, so brightness alone does not separate them from targets;
4. a mild optical blur, then the targets;
5. vignetting, fixed-pattern column stripes, Gaussian read noise, a few hot pixels,
   rounding to uint8.

Targets: 1 to 4 per image, each a Gaussian spot (one in three elongated up to about
2:1, at a random angle) whose half-maximum region is 1 to 9 pixels across. Its peak
above the background is a signal-to-clutter ratio times the local clutter level: the
standard deviation of the scene's fine detail around it (floored at 1.5 times the
image's median) plus the read noise. Nine in ten targets are clear (ratio 6 to 16),
one in ten is dim (ratio 3.5 to 6); peaks stay below saturation.

Mask: a pixel belongs to a target where that target's own sampled profile reaches at
least half of its highest sampled value (the half-maximum region), whatever the clutter
under it. Target centres are at least 12 pixels apart, so each target is one connected
component of the mask.

Every image depends only on ``(seed, index)``: any subset of a dataset can be remade
on its own, and the first images do not change when ``num_images`` grows.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from scipy import ndimage

from limijax.errors import UserError

MIN_SIZE = 32
MAX_TARGETS = 4
MAX_EXTENT = 9  # pixels across a target's half-maximum region, at most

# A Gaussian's half-maximum region is 2*sqrt(2 ln 2) = 2.355 sigma across; these bounds
# keep it between 1 and MAX_EXTENT pixels once sampled on the pixel grid.
_SIGMA_MIN = 0.6
_SIGMA_MAX = 3.1
_MIN_SEPARATION = 12  # pixels between target centres, so masks never touch
# Contrasts, of targets and decoys alike, are multiples of a per-pixel clutter level:
# the standard deviation of the high-passed scene (minus a Gaussian blur of this sigma,
# so slow cloud gradients do not count) in a square window, plus the read noise.
_HIGHPASS_SIGMA = 2.0
_LOCAL_WINDOW = 15
# The level is floored at this multiple of the image's median, so that a target on a
# smooth patch of a busy image is not too faint for any detector that thresholds the
# whole image, and one on clear sky is not a few grey levels high.
_LEVEL_FLOOR = 1.5
# Signal-to-clutter ratios: most targets clear, a minority dim.
_DIM_FRACTION = 0.1
_DIM_SCR = (3.5, 6.0)
_CLEAR_SCR = (6.0, 16.0)

# The decoys. These set the difficulty: with them, a white top-hat tuned on validation
# scores about 0.3 mIoU on 128x128 images, well below Limi-Net (README, Results).
_CLUTTER_GAIN = 0.5  # point-clutter contrast, as a fraction of a target's (same law)
_CLUTTER_PER_128 = (2.0, 8.0)  # range of the mean count of clutter shapes per 128x128
_LINE_GAIN = 0.3  # thin lines are long: each bright one costs a top-hat many pixels
_LINES_MAX = 3
_CLOUD_TEXTURE = (0.15, 0.45)  # fine texture inside clouds, relative to cloud brightness
_GROUND_TEXTURE = (0.3, 0.9)


def generate(num_images: int, size: int, seed: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
  """Yield ``(id, image, mask)`` for ``num_images`` scenes of ``size`` x ``size`` pixels.

  ``image`` is uint8 grey, ``mask`` uint8 in {0, 1}; ids run ``syn_00000``, ``syn_00001``...
  Image ``i`` is drawn from ``np.random.default_rng([seed, i])`` alone.
  """
  if num_images < 0:
    raise UserError(f'data.num_images must be >= 0, got {num_images}')
  if size < MIN_SIZE:
    raise UserError(f'data.synthetic_size must be >= {MIN_SIZE}, got {size}')
  for index in range(num_images):
    yield scene(index, size, seed)


def scene(index: int, size: int, seed: int) -> tuple[str, np.ndarray, np.ndarray]:
  """Image ``index`` of :func:`generate`: ``(id, image, mask)``."""
  image, mask = make_image(np.random.default_rng([seed, index]), size)
  return f'syn_{index:05d}', image, mask


def make_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Draw one scene: ``(image uint8 (size, size), mask uint8 (size, size) in {0, 1})``."""
  if size < MIN_SIZE:
    raise UserError(f'synthetic image size must be >= {MIN_SIZE}, got {size}')
  noise_sd = rng.uniform(1.0, 3.0)

  scene = _sky(rng, size)
  if rng.random() < 0.7:
    scene = _terrain(rng, size, scene)
  scene = _to_grey(rng, scene)

  # Point clutter takes its contrast from the same local measure as the targets, so a
  # global threshold on brightness cannot tell the two apart.
  local_sd = _clutter_level(scene, noise_sd)
  scene = _point_clutter(rng, scene, local_sd)
  scene = _thin_lines(rng, scene, local_sd)
  scene = ndimage.gaussian_filter(scene, rng.uniform(0.35, 0.6))

  # Targets are measured against the blurred scene they will sit in.
  local_sd = _clutter_level(scene, noise_sd)
  targets, mask = _targets(rng, scene, local_sd)
  radiance = scene + targets

  image = _sensor(rng, radiance, noise_sd)
  return image, mask


# --- texture ----------------------------------------------------------------------------


def _power_noise(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
  """Zero-mean, unit-variance noise with power spectrum ~ 1/f^beta (spectral synthesis).

  beta near 3 gives smooth cloud-like fields with detail at every scale; near 2 it is
  rough, like ground texture seen from afar.
  """
  fy = np.fft.fftfreq(size)[:, None]
  fx = np.fft.rfftfreq(size)[None, :]
  f = np.hypot(fy, fx)
  f[0, 0] = 1.0
  amplitude = f ** (-beta / 2)
  amplitude[0, 0] = 0.0
  spectrum = amplitude * (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape))
  field = np.fft.irfft2(spectrum, s=(size, size))
  return (field - field.mean()) / (field.std() + 1e-12)


def _power_noise_1d(rng: np.random.Generator, n: int, beta: float) -> np.ndarray:
  f = np.fft.rfftfreq(n)
  f[0] = 1.0
  amplitude = f ** (-beta / 2)
  amplitude[0] = 0.0
  spectrum = amplitude * (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape))
  line = np.fft.irfft(spectrum, n=n)
  return (line - line.mean()) / (line.std() + 1e-12)


def _clutter_level(image: np.ndarray, noise_sd: float) -> np.ndarray:
  """Per-pixel clutter level, in grey levels, that contrasts are multiples of."""
  detail = image - ndimage.gaussian_filter(image, _HIGHPASS_SIGMA)
  sd = _local_sd(detail)
  return np.maximum(sd, _LEVEL_FLOOR * np.median(sd)) + noise_sd


def _local_sd(image: np.ndarray) -> np.ndarray:
  mean = ndimage.uniform_filter(image, _LOCAL_WINDOW, mode='reflect')
  sq = ndimage.uniform_filter(image * image, _LOCAL_WINDOW, mode='reflect')
  return np.sqrt(np.maximum(sq - mean * mean, 0.0))


# --- scene ------------------------------------------------------------------------------


def _sky(rng: np.random.Generator, size: int) -> np.ndarray:
  """Sky gradient plus clouds, in arbitrary units (scaled to grey levels later)."""
  rows = np.linspace(-1.0, 1.0, size)[:, None]
  sky = rng.uniform(-0.6, 0.6) * rows + 0.3 * _power_noise(rng, size, 3.5)
  cover = _power_noise(rng, size, rng.uniform(2.6, 3.4))
  threshold = rng.uniform(-0.6, 1.2)  # low = overcast, high = a few small clouds
  softness = rng.uniform(0.1, 0.6)
  cloud = np.clip((cover - threshold) / softness, 0.0, 1.0)
  # Fine texture inside clouds makes many small bright bumps, a top-hat's favourite.
  texture = _power_noise(rng, size, rng.uniform(1.6, 2.2))
  brightness = rng.uniform(0.8, 2.0)
  sky = sky + brightness * cloud * (1.0 + rng.uniform(*_CLOUD_TEXTURE) * texture)
  # Sun-lit cloud rims: thin bright bands along a contour of the cover field.
  rim_width = rng.uniform(0.03, 0.08)
  rims = np.exp(-(((cover - threshold) / rim_width) ** 2))
  sky = sky + rng.uniform(0.0, 0.8) * rims
  return sky


def _terrain(rng: np.random.Generator, size: int, sky: np.ndarray) -> np.ndarray:
  """Replace the lower part of the scene with textured ground below a wavy horizon."""
  rows = np.arange(size)[:, None]
  horizon = rng.uniform(0.3, 0.8) * size + rng.uniform(1.0, 0.08 * size) * _power_noise_1d(
      rng, size, rng.uniform(1.5, 2.5))
  # Fractional coverage of each pixel by the ground gives an anti-aliased, sharp edge.
  ground = np.clip(rows - horizon[None, :] + 0.5, 0.0, 1.0)

  level = rng.uniform(-1.0, 1.5)
  texture = _power_noise(rng, size, rng.uniform(1.8, 2.5))
  land = level + rng.uniform(*_GROUND_TEXTURE) * texture
  # Ridges: bright lines along contours of a second height field.
  height = _power_noise(rng, size, rng.uniform(2.5, 3.2))
  for contour in rng.uniform(-1.5, 1.5, size=rng.integers(1, 4)):
    width = rng.uniform(0.03, 0.1)
    land = land + rng.uniform(0.3, 1.2) * np.exp(-(((height - contour) / width) ** 2))

  land = _buildings(rng, land, horizon)
  scene = sky * (1.0 - ground) + land * ground

  if rng.random() < 0.6:  # warm edge along the horizon, one or two pixels thick
    distance = rows - horizon[None, :]
    scene = scene + rng.uniform(0.4, 1.5) * np.exp(-0.5 * (distance / rng.uniform(0.5, 1.0)) ** 2)
  return scene


def _buildings(rng: np.random.Generator, land: np.ndarray, horizon: np.ndarray) -> np.ndarray:
  """Sharp-edged rectangles below the horizon; some hold a grid of lit windows."""
  size = land.shape[0]
  land = land.copy()
  scale = size / 128
  for _ in range(rng.poisson(6 * scale * scale) if rng.random() < 0.7 else 0):
    h = int(rng.integers(2, 16))
    w = int(rng.integers(2, 16))
    x = int(rng.integers(0, size - w))
    # The ground mask later cuts whatever rises above the horizon, like a skyline.
    lowest_top = int(np.clip(horizon[x:x + w].min() - h // 2, 0, size - h))
    y = int(rng.integers(lowest_top, size - h + 1))
    offset = rng.uniform(0.5, 2.0) * (1 if rng.random() < 0.75 else -1)
    land[y:y + h, x:x + w] += offset
    if h >= 5 and w >= 5 and rng.random() < 0.5:
      step = int(rng.integers(2, 4))
      lit = rng.uniform(0.5, 1.5)
      for wy in range(y + 1, y + h - 1, step):
        for wx in range(x + 1, x + w - 1, step):
          if rng.random() < 0.7:
            land[wy, wx] += lit
  return land


def _to_grey(rng: np.random.Generator, scene: np.ndarray) -> np.ndarray:
  """Map the scene onto a random grey range, keeping headroom below 255 for targets."""
  lo, hi = np.percentile(scene, [1.0, 99.0])
  dark = rng.uniform(20.0, 100.0)
  contrast = rng.uniform(40.0, 120.0)
  grey = dark + (scene - lo) * (contrast / max(hi - lo, 1e-6))
  return np.clip(grey, 0.0, 215.0)


# --- clutter that mimics targets ----------------------------------------------------------


def _stamp(image: np.ndarray, patch: np.ndarray, cy: int, cx: int) -> None:
  """Add ``patch`` centred at (cy, cx), cropped at the borders."""
  size = image.shape[0]
  ph, pw = patch.shape
  y0, x0 = cy - ph // 2, cx - pw // 2
  ys, xs = max(y0, 0), max(x0, 0)
  ye, xe = min(y0 + ph, size), min(x0 + pw, size)
  if ys >= ye or xs >= xe:
    return
  image[ys:ye, xs:xe] += patch[ys - y0:ye - y0, xs - x0:xe - x0]


def _clutter_shape(rng: np.random.Generator) -> np.ndarray:
  """A small bright shape, amplitude 1, that is *not* a smooth isotropic spot."""
  kind = rng.integers(0, 7)
  if kind == 0:  # flat square, 2-5 px
    s = int(rng.integers(2, 6))
    return np.ones((s, s))
  if kind == 1:  # bar: elongated, sharp
    length, width = int(rng.integers(4, 10)), int(rng.integers(1, 3))
    bar = np.ones((width, length))
    return bar if rng.random() < 0.5 else bar.T
  if kind == 2:  # cross
    s = int(rng.choice([3, 5, 7]))
    cross = np.zeros((s, s))
    cross[s // 2, :] = 1.0
    cross[:, s // 2] = 1.0
    return cross
  if kind == 3:  # flat disc with a hard edge
    r = rng.uniform(1.5, 3.5)
    n = int(np.ceil(r)) * 2 + 1
    yy, xx = np.mgrid[:n, :n] - n // 2
    return (yy * yy + xx * xx <= r * r).astype(np.float64)
  if kind == 4:  # corner (L)
    s = int(rng.integers(3, 7))
    corner = np.zeros((s, s))
    corner[0, :] = 1.0
    corner[:, 0] = 1.0
    return np.rot90(corner, int(rng.integers(0, 4)))
  if kind == 5:  # tight cluster of 3-6 one- or two-pixel dots
    n = 9
    cluster = np.zeros((n, n))
    for _ in range(rng.integers(3, 7)):
      y, x = rng.integers(0, n - 1, size=2)
      d = int(rng.integers(1, 3))
      cluster[y:y + d, x:x + d] = rng.uniform(0.6, 1.0)
    return cluster
  # textured blob: a flat patch with strong pixel-to-pixel variation
  s = int(rng.integers(3, 7))
  return rng.uniform(0.3, 1.0, size=(s, s))


def _point_clutter(rng: np.random.Generator, scene: np.ndarray, local_sd: np.ndarray) -> np.ndarray:
  size = scene.shape[0]
  scene = scene.copy()
  count = rng.poisson(rng.uniform(*_CLUTTER_PER_128) * (size / 128) ** 2)
  for _ in range(count):
    cy, cx = (int(v) for v in rng.integers(0, size, size=2))
    amplitude = _contrast(rng) * _CLUTTER_GAIN * local_sd[cy, cx]
    amplitude = max(min(amplitude, 250.0 - scene[cy, cx]), 0.0)
    _stamp(scene, amplitude * _clutter_shape(rng), cy, cx)
  return scene


def _thin_lines(rng: np.random.Generator, scene: np.ndarray, local_sd: np.ndarray) -> np.ndarray:
  """Roads, wires and contrails: one-pixel lines, some long, some short."""
  size = scene.shape[0]
  scene = scene.copy()
  for _ in range(rng.integers(0, _LINES_MAX + 1)):
    y0, x0 = rng.uniform(0, size, size=2)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(6, size)
    t = np.linspace(0.0, length, int(length * 2) + 2)
    ys = np.clip(y0 + t * np.sin(angle), 0, size - 1).round().astype(int)
    xs = np.clip(x0 + t * np.cos(angle), 0, size - 1).round().astype(int)
    line = np.zeros_like(scene)
    line[ys, xs] = 1.0
    amplitude = _contrast(rng) * _LINE_GAIN * float(np.median(local_sd[ys, xs]))
    scene += amplitude * line
  return scene


# --- targets ------------------------------------------------------------------------------


def _contrast(rng: np.random.Generator) -> float:
  """Signal-to-clutter ratio: mostly clear, a minority dim."""
  if rng.random() < _DIM_FRACTION:
    return float(rng.uniform(*_DIM_SCR))
  return float(rng.uniform(*_CLEAR_SCR))


def _targets(rng: np.random.Generator, scene: np.ndarray, local_sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  size = scene.shape[0]
  radiance = np.zeros_like(scene)
  mask = np.zeros(scene.shape, np.uint8)
  margin = 5  # keeps the whole half-maximum region inside the image
  centres: list[tuple[float, float]] = []
  wanted = int(rng.integers(1, MAX_TARGETS + 1))
  for _ in range(50 * wanted):
    if len(centres) == wanted:
      break
    cy, cx = rng.uniform(margin, size - 1 - margin, size=2)
    if any(np.hypot(cy - y, cx - x) < _MIN_SEPARATION for y, x in centres):
      continue
    profile = _gaussian_spot(rng, size, cy, cx)
    iy, ix = int(round(cy)), int(round(cx))
    amplitude = _contrast(rng) * local_sd[iy, ix]
    # Stay below saturation: a clipped, flat-topped target would look like clutter.
    # Where that would take more than half the contrast away, try elsewhere.
    headroom = 250.0 - scene[iy, ix]
    if headroom < 0.5 * amplitude:
      continue
    amplitude = min(amplitude, headroom)
    centres.append((cy, cx))
    radiance += amplitude * profile
    mask |= (profile >= 0.5 * profile.max()).astype(np.uint8)  # half-maximum region
  return radiance, mask


def _gaussian_spot(rng: np.random.Generator, size: int, cy: float, cx: float) -> np.ndarray:
  """A unit-peak Gaussian, sampled at pixel centres; one in three is elongated."""
  sigma = float(np.exp(rng.uniform(np.log(_SIGMA_MIN), np.log(_SIGMA_MAX))))
  ratio = rng.uniform(1.3, 2.2) if rng.random() < 1 / 3 else 1.0
  s_major, s_minor = sigma, max(sigma / ratio, _SIGMA_MIN)
  angle = rng.uniform(0.0, np.pi)
  yy, xx = np.mgrid[:size, :size].astype(np.float64)
  dy, dx = yy - cy, xx - cx
  u = dx * np.cos(angle) + dy * np.sin(angle)
  v = -dx * np.sin(angle) + dy * np.cos(angle)
  spot = np.exp(-0.5 * ((u / s_major) ** 2 + (v / s_minor) ** 2))
  spot[spot < 1e-4] = 0.0
  return spot / spot.max()


# --- sensor ---------------------------------------------------------------------------------


def _sensor(rng: np.random.Generator, radiance: np.ndarray, noise_sd: float) -> np.ndarray:
  size = radiance.shape[0]
  yy, xx = np.mgrid[:size, :size] / (size - 1) - 0.5
  vignette = 1.0 - rng.uniform(0.0, 0.5) * (yy * yy + xx * xx) * 2.0
  image = radiance * vignette
  # Fixed-pattern noise: per-column offsets, the striping of scanning/uncooled sensors.
  image = image + rng.normal(0.0, rng.uniform(0.0, 2.5), size=(1, size))
  image = image + rng.normal(0.0, noise_sd, size=image.shape)
  for _ in range(rng.integers(0, 4)):  # hot pixels
    y, x = rng.integers(0, size, size=2)
    image[y, x] += rng.uniform(20.0, 60.0)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)
