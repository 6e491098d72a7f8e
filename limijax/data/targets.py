"""What a dataset's real targets look like: size, brightness over the local background and
signal-to-clutter ratio, and the ITS ranges (:mod:`limijax.its`) they suggest.

For every ground-truth target (an 8-connected component of a mask, as Pd counts them):

* ``area`` in pixels, and ``radius`` = sqrt(area / pi), the radius of a disc of that area
  (what ITS's ``min_size`` and ``max_size`` draw);
* ``peak`` = the brightest grey level of the target minus the mean grey level of its
  ring (below), in grey levels (0..255): what ITS paints as ``contrast * 255`` above the
  local mean;
* ``scr`` = (mean of the target - mean of the ring) / std of the ring, the
  signal-to-clutter ratio :mod:`limijax.analysis` buckets targets by.

The ring is every pixel within Chebyshev distance :data:`RING_RADIUS` of the target that
belongs to no target (a dilation by a square of side ``2 r + 1``), clipped to the image;
its standard deviation is floored at :data:`MIN_RING_STD` grey level (an 8-bit image
resolves no less). ``peak`` and ``scr`` are None for a target whose ring is empty.

:func:`its_ranges` turns the 10th and 90th percentiles of ``radius`` and ``peak`` into
``data.its`` settings. Measure the training split only (``python -m limijax.data
--root=DIR --targets``): settings read off the test images would be chosen on them.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

RING_RADIUS = 5
MIN_RING_STD = 1.0
EIGHT = np.ones((3, 3), bool)  # 8-connectivity, as metrics.py labels components
# What its_ranges reads off the measured targets: the middle 80 %.
LOW_PERCENTILE, HIGH_PERCENTILE = 10, 90


def ring_stats(image: np.ndarray, obj: np.ndarray, targets: np.ndarray,
               box: tuple[int, int, int, int], radius: int = RING_RADIUS):
  """``(grey of the object's pixels, grey of its ring)`` (float64 1-D arrays) of the
  object ``obj`` (bool (H, W), inside ``box`` = (row0, row1, col0, col1)) on ``image``;
  ``targets`` (bool (H, W)) are kept out of the ring. Only the box grown by ``radius`` is
  looked at, which holds the whole ring."""
  h, w = obj.shape
  r0, r1, c0, c1 = box
  window = (slice(max(r0 - radius, 0), min(r1 + radius, h)),
            slice(max(c0 - radius, 0), min(c1 + radius, w)))
  inside = obj[window]
  near = ndimage.binary_dilation(inside, structure=np.ones((2 * radius + 1,) * 2, bool))
  ring = near & ~inside & ~targets[window]
  grey = np.asarray(image[window], np.float64)
  return grey[inside], grey[ring]


def scr(target: np.ndarray, ring: np.ndarray) -> float | None:
  """The signal-to-clutter ratio of :func:`ring_stats`'s two arrays (module docstring)."""
  if not ring.size or not target.size:
    return None
  return float((target.mean() - ring.mean()) / max(ring.std(), MIN_RING_STD))


def measure(image: np.ndarray, mask: np.ndarray) -> list[dict]:
  """One dict per target of ``mask`` (non-zero = target) on the grey ``image``:
  ``area``, ``radius``, ``peak``, ``scr`` (module docstring)."""
  targets = np.asarray(mask) > 0
  labels, n = ndimage.label(targets, structure=EIGHT)
  out = []
  for k, sl in enumerate(ndimage.find_objects(labels), start=1):
    if sl is None:
      continue
    box = (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop)
    inside, ring = ring_stats(image, labels == k, targets, box)
    area = int(inside.size)
    out.append({'area': area, 'radius': math.sqrt(area / math.pi),
                'peak': float(inside.max() - ring.mean()) if ring.size else None,
                'scr': scr(inside, ring)})
  assert len(out) == n
  return out


def measure_all(records: Iterable[dict]) -> list[dict]:
  """:func:`measure` over records with ``image`` and ``mask`` (a source's items)."""
  out = []
  for r in records:
    out += measure(r['image'], r['mask'])
  return out


def summary(targets: Sequence[dict]) -> dict:
  """Per measure (area, radius, peak, scr): ``n`` and the percentiles 0, 10, 25, 50, 75,
  90 and 100 of the targets where it is known."""
  out = {}
  for key in ('area', 'radius', 'peak', 'scr'):
    values = np.array([t[key] for t in targets if t[key] is not None], np.float64)
    q = (0, LOW_PERCENTILE, 25, 50, 75, HIGH_PERCENTILE, 100)
    out[key] = {'n': int(values.size),
                **{f'p{p}': (float(np.percentile(values, p)) if values.size else None)
                   for p in q}}
  return out


def its_ranges(stats: dict) -> dict:
  """``data.its`` radius and contrast ranges covering the middle 80 % of the measured
  targets (:func:`summary`): ``min_size``/``max_size`` from ``radius``, rounded to 0.1 px
  (at least 0.5), and ``min_contrast``/``max_contrast`` from ``peak`` / 255, rounded to
  0.01 (within (0, 1])."""
  lo_r = max(0.5, round(stats['radius'][f'p{LOW_PERCENTILE}'], 1))
  hi_r = max(lo_r, round(stats['radius'][f'p{HIGH_PERCENTILE}'], 1))
  lo_c = min(1.0, max(0.01, round(stats['peak'][f'p{LOW_PERCENTILE}'] / 255, 2)))
  hi_c = min(1.0, max(lo_c, round(stats['peak'][f'p{HIGH_PERCENTILE}'] / 255, 2)))
  return {'min_size': lo_r, 'max_size': hi_r, 'min_contrast': lo_c, 'max_contrast': hi_c}


def format_summary(stats: dict, ranges: dict, what: str) -> str:
  rows = [f'targets of {what}: {stats["area"]["n"]}',
          '| measure | p0 | p10 | p25 | p50 | p75 | p90 | p100 | n |',
          '|---|---|---|---|---|---|---|---|---|']
  for key, label in (('area', 'area (px)'), ('radius', 'radius sqrt(area/pi) (px)'),
                     ('peak', 'peak over ring (grey)'), ('scr', 'SCR')):
    s = stats[key]
    cells = ['n/a' if s[f'p{p}'] is None else f'{s[f"p{p}"]:.2f}'
             for p in (0, 10, 25, 50, 75, 90, 100)]
    rows.append(f'| {label} | {" | ".join(cells)} | {s["n"]} |')
  rows.append('ITS ranges for the middle 80 %: '
              + ' '.join(f'--config.data.its.{k}={v}' for k, v in ranges.items()))
  return '\n'.join(rows)
