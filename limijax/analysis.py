"""Where a detector succeeds and fails: the computations behind ``python -m limijax.analyze``.

Everything here is numpy and scipy on the host (and PIL for the gallery captions); no
JAX. An image to analyse is a :class:`Sample`: its ground truth, and either the model's
logits or an 8-bit probability map (grey value / 255). Every Pd, Fa and IoU number comes
from :mod:`limijax.metrics` (:class:`~limijax.metrics.MetricAccumulator` and
:func:`~limijax.metrics.match_components`): nothing here matches components itself.

* **The threshold sweep** (:func:`sweep_image`): the metrics of the set at every
  probability threshold of :data:`THRESHOLDS`. A logit map is cut as ``logits >
  logit(t)`` and a grey map as ``value / 255 > t``, so at ``t = 0.5`` the cut is exactly
  ``evaluate``'s (``logits > 0``; ``value / 255 > 0.5``) and so are the metrics. Per
  image the masks of the sweep are nested (a higher threshold keeps a subset of the
  pixels), so two thresholds give the same mask exactly when they keep the same number
  of pixels; those counts come from one sort of the image's scores, and each distinct
  mask is scored once. A mask is scored only within the window holding its pixels and
  the targets': matching is unchanged by the translation (raster order and centroid
  distances stay the same), and only the image's pixel count is restored afterwards.
* **The Pd-Fa area** (:func:`pd_fa_area`): ``(1 / B) * integral over f in [0, B] of
  best(f) df``, where ``best(f)`` is the highest Pd among the swept thresholds whose Fa is
  at most ``f`` (0 if none) and ``B`` the Fa bound (:data:`FA_BOUND_E6`, in 1e-6). It is
  the mean, over false-alarm budgets spread evenly up to ``B``, of the best detection rate
  the sweep reaches within the budget: 1 for a detector that finds every target with no
  false alarm, 0 for one that finds nothing within the bound.
* **Targets and false alarms at the operating point** (:func:`image_details`): each
  ground-truth component (8-connected, as Pd counts them) with its area, whether it was
  found, its IoU with the predicted component matched to it (0 when missed), its local
  contrast and the highest probability inside it; each false-alarm component likewise.
* **Local contrast** (:func:`local_contrast`), the signal-to-clutter ratio
  ``(mean(T) - mean(R)) / std(R)`` on the grey image, where ``T`` is the object's pixels
  and the ring ``R`` is every pixel within Chebyshev distance :data:`RING_RADIUS` of the
  object (a binary dilation by a square of side ``2 r + 1``), clipped to the image, that
  belongs neither to the object nor to any ground-truth target. ``std`` is the population
  standard deviation, floored at :data:`MIN_RING_STD` grey level (an 8-bit image resolves
  no less; a flat background would otherwise divide by 0). None when the ring is empty or
  there is no grey image.
* **Buckets** (:func:`buckets`): targets grouped by area (:data:`AREA_BUCKETS`) or by
  contrast (:data:`CONTRAST_EDGES`), with Pd, mean per-target IoU and misses per bucket.
* **Worst first**: images (:func:`worst_first`) by most missed targets, then most
  false-alarm pixels, then lowest IoU; missed targets for the gallery by highest contrast
  (the clearest misses), then largest area; false alarms by most pixels, then highest
  probability (:func:`gallery`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from limijax import metrics
from limijax.data import targets as target_stats
from limijax.predict import FALSE_ALARM_COLOUR, HIT_COLOUR, MISS_COLOUR, PANEL_COLOUR

# Every hundredth from 0.01 to 0.99, and three more on each tail, where a confident
# model's pixels lie. 0.5 (= 50 / 100 exactly) is among them: the operating point.
THRESHOLDS = np.unique(np.concatenate(
    [np.arange(1, 100) / 100, [0.001, 0.002, 0.005, 0.995, 0.998, 0.999]]))
OPERATING_POINT = 0.5
FA_BOUND_E6 = 100.0  # the Pd-Fa area is taken up to Fa = 100e-6
# Target area buckets (px): (label, largest area in it); the last one is open.
AREA_BUCKETS = (('1-9', 9), ('10-25', 25), ('26-64', 64), ('65-144', 144), ('>144', None))
# Contrast buckets: below 1, [1, 2), [2, 4), [4, 8), 8 and above; then 'n/a'.
CONTRAST_EDGES = (1.0, 2.0, 4.0, 8.0)
CONTRAST_LABELS = ('<1', '1-2', '2-4', '4-8', '>=8', 'n/a')
RING_RADIUS, MIN_RING_STD = target_stats.RING_RADIUS, target_stats.MIN_RING_STD
# The gallery: a crop of at least GALLERY_CROP px around each case, scaled up by an
# integer factor (nearest neighbour) into a GALLERY_TILE px square, framed GALLERY_BORDER
# px in the case's colour, captioned below; GALLERY_COLUMNS panels a row, GALLERY_GAP apart.
GALLERY_CROP = 24
GALLERY_TILE = 96
GALLERY_BORDER = 2
GALLERY_CAPTION = 36
GALLERY_GAP = 6
GALLERY_COLUMNS = 6
_CAPTION_COLOUR = (230, 230, 230)
_EIGHT = np.ones((3, 3), bool)


@dataclasses.dataclass
class Sample:
  """One image: ``gt`` bool (H, W); ``values`` the model's logits (float, ``logits``
  True) or its probability map as 8-bit grey (uint8, ``logits`` False); ``image`` the
  grey uint8 input (None when unknown: no contrast, and pictures show the probability)."""
  stem: str
  gt: np.ndarray
  values: np.ndarray
  logits: bool
  image: np.ndarray | None = None

  def score(self) -> np.ndarray:
    """float64 scores cut by :func:`cutoffs`: the logits, or value / 255 as evaluate reads
    it (float32 logits become float64 exactly)."""
    v = np.asarray(self.values, np.float64)
    return v if self.logits else v / 255.0

  def probability(self, score: np.ndarray | None = None) -> np.ndarray:
    s = self.score() if score is None else score
    if not self.logits:
      return s
    with np.errstate(over='ignore'):
      return 1.0 / (1.0 + np.exp(-s))


def cutoffs(thresholds, logits: bool) -> np.ndarray:
  """The score cut-off of each probability threshold: a pixel is a target when its score
  is ``>`` it. ``logit(t) = log(t / (1 - t))`` for logits (exactly 0 at t = 0.5), ``t``
  itself for probabilities."""
  t = np.asarray(thresholds, np.float64)
  if not np.all((t > 0) & (t < 1)):
    raise ValueError(f'thresholds must lie strictly between 0 and 1, got {t}')
  return np.log(t / (1.0 - t)) if logits else t


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
  """(row start, row stop, col start, col stop) of a mask's pixels; None when empty."""
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  if not rows.size:
    return None
  return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _union(a, b):
  if a is None or b is None:
    return a if b is None else b
  return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def sweep_image(score: np.ndarray, gt: np.ndarray, cuts: np.ndarray,
                distance_threshold: float = 3.0) -> list[metrics.MetricAccumulator]:
  """One image's :class:`~limijax.metrics.MetricAccumulator` for each cut-off (``score >
  cut``); cut-offs that give the same mask share one object (see the module docstring).
  Each mask is scored within the window of its own pixels and the targets."""
  cuts = np.asarray(cuts, np.float64)
  order = np.argsort(cuts, kind='stable')
  # The largest mask of the sweep (the lowest cut-off), and the targets: all there is.
  outer = _union(_bounds(score > cuts[order[0]]), _bounds(gt)) or (0, 1, 0, 1)
  s = score[outer[0]:outer[1], outer[2]:outer[3]]
  g = gt[outer[0]:outer[1], outer[2]:outer[3]]
  targets = _bounds(g)
  ranked = np.sort(s, axis=None)
  kept = ranked.size - np.searchsorted(ranked, cuts, side='right')  # pixels > each cut
  out: list = [None] * len(cuts)
  previous = None
  for k in order:
    if previous is not None and kept[k] == kept[previous]:
      out[k] = out[previous]  # nested masks of equal size: the same mask
    else:
      mask = s > cuts[k]
      r0, r1, c0, c1 = _union(_bounds(mask), targets) or (0, 1, 0, 1)
      one = metrics.MetricAccumulator(distance_threshold)
      one.update(mask[r0:r1, c0:c1], g[r0:r1, c0:c1], num_pixels=gt.size)
      out[k] = one
    previous = k
  return out


@dataclasses.dataclass(frozen=True)
class Case:
  """A ground-truth target or a false-alarm component at the operating point. ``box``:
  (row start, row stop, col start, col stop); ``iou``: with the matched component (0 when
  missed, or a false alarm); ``p_max``: the highest probability inside."""
  index: int
  stem: str
  area: int
  found: bool
  iou: float
  contrast: float | None
  p_max: float
  box: tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class ImageRow:
  """One line of per_image.csv (``iou`` None when the image has neither a target nor a
  predicted pixel)."""
  stem: str
  height: int
  width: int
  targets: int
  matched: int
  missed: int
  fa_components: int
  fa_pixels: int
  iou: float | None


def local_contrast(image: np.ndarray, obj: np.ndarray, targets: np.ndarray,
                   box: tuple[int, int, int, int], radius: int = RING_RADIUS) -> float | None:
  """The signal-to-clutter ratio of the object ``obj`` (bool (H, W), inside ``box``) on
  ``image``; ``targets`` (bool (H, W)) are kept out of the ring. See the module docstring
  (and :mod:`limijax.data.targets`, which measures a dataset's targets the same way)."""
  return target_stats.scr(*target_stats.ring_stats(image, obj, targets, box, radius))


def _box(slices) -> tuple[int, int, int, int]:
  return (slices[0].start, slices[0].stop, slices[1].start, slices[1].stop)


def _label_max(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
  """The largest of ``values`` under each label 1..n (the labelled pixels only, which
  are few: ndimage.maximum sorts the whole image)."""
  where = labels > 0
  out = np.full(n, -np.inf)
  np.maximum.at(out, labels[where] - 1, values[where])
  return out


def image_details(index: int, sample: Sample, threshold: float = OPERATING_POINT,
                  distance_threshold: float = 3.0, score: np.ndarray | None = None
                  ) -> tuple[ImageRow, list[Case], list[Case]]:
  """(row, targets, false alarms) of one image at ``threshold``, by
  :func:`~limijax.metrics.match_components`."""
  score = sample.score() if score is None else score
  pred = score > cutoffs([threshold], sample.logits)[0]
  m = metrics.match_components(pred, sample.gt, distance_threshold)
  prob = sample.probability(score)
  n_gt, n_pred = len(m.gt_areas), len(m.pred_areas)
  # Pixels shared by target g and predicted component p, keyed g * (n_pred + 1) + p.
  both = (m.gt_labels > 0) & (m.pred_labels > 0)
  keys = m.gt_labels[both].astype(np.int64) * (n_pred + 1) + m.pred_labels[both]
  shared = dict(zip(*(a.tolist() for a in np.unique(keys, return_counts=True))))
  p_gt, p_pred = _label_max(prob, m.gt_labels, n_gt), _label_max(prob, m.pred_labels, n_pred)

  def contrast(labels, k, box):
    if sample.image is None:
      return None
    obj = np.zeros(labels.shape, bool)
    r0, r1, c0, c1 = box
    obj[r0:r1, c0:c1] = labels[r0:r1, c0:c1] == k
    return local_contrast(sample.image, obj, sample.gt, box)

  targets = []
  for g, slices in enumerate(ndimage.find_objects(m.gt_labels)):
    j = int(m.gt_match[g])
    iou = 0.0
    if j >= 0:
      inter = shared.get((g + 1) * (n_pred + 1) + j + 1, 0)
      iou = inter / (int(m.gt_areas[g]) + int(m.pred_areas[j]) - inter)
    box = _box(slices)
    targets.append(Case(index, sample.stem, int(m.gt_areas[g]), j >= 0, iou,
                        contrast(m.gt_labels, g + 1, box), float(p_gt[g]), box))
  false_alarms = []
  for p, slices in enumerate(ndimage.find_objects(m.pred_labels)):
    if m.pred_matched[p]:
      continue
    box = _box(slices)
    false_alarms.append(Case(index, sample.stem, int(m.pred_areas[p]), False, 0.0,
                             contrast(m.pred_labels, p + 1, box), float(p_pred[p]), box))
  union = int(np.count_nonzero(pred | sample.gt))
  row = ImageRow(sample.stem, *sample.gt.shape, n_gt, m.num_matched, n_gt - m.num_matched,
                 m.num_false_alarm_components, m.num_false_alarm_pixels,
                 int(np.count_nonzero(pred & sample.gt)) / union if union else None)
  return row, targets, false_alarms


@dataclasses.dataclass
class Analysis:
  """What :func:`analyse` finds: the sweep's METRICS per threshold (``curve``), and the
  images, targets and false alarms at the operating point."""
  thresholds: np.ndarray
  curve: list[dict]
  rows: list[ImageRow]
  targets: list[Case]
  false_alarms: list[Case]
  fa_bound_e6: float
  has_images: bool

  @property
  def operating_point(self) -> dict:
    return self.curve[int(np.flatnonzero(self.thresholds == OPERATING_POINT)[0])]

  @property
  def area(self) -> float | None:
    return pd_fa_area([p['fa_e6'] for p in self.curve], [p['pd'] for p in self.curve],
                      self.fa_bound_e6)


def analyse(samples: Sequence[Sample], thresholds=THRESHOLDS,
            fa_bound_e6: float = FA_BOUND_E6, distance_threshold: float = 3.0,
            threads: int | None = None, progress: Callable[[], None] | None = None
            ) -> Analysis:
  """The sweep and the details of every sample. ``thresholds`` must hold 0.5. Images are
  scored by ``threads`` threads (default: up to 4, one per core; scipy's labelling
  releases the GIL) and summed in their order, so the sums equal one image at a time's.
  ``progress()`` is called once per image done."""
  thresholds = np.asarray(thresholds, np.float64)
  if not np.any(thresholds == OPERATING_POINT):
    raise ValueError('thresholds must include the operating point 0.5')
  if not fa_bound_e6 > 0:
    raise ValueError(f'the Fa bound must be > 0, got {fa_bound_e6}')

  def one(item):
    index, sample = item
    score = sample.score()
    accs = sweep_image(score, sample.gt, cutoffs(thresholds, sample.logits),
                       distance_threshold)
    return accs, image_details(index, sample, OPERATING_POINT, distance_threshold, score)

  totals = [metrics.MetricAccumulator(distance_threshold) for _ in thresholds]
  rows, targets, false_alarms = [], [], []
  threads = threads or max(1, min(4, os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for accs, (row, t, f) in pool.map(one, enumerate(samples)):  # in the images' order
      for total, acc in zip(totals, accs):
        total.merge(acc)
      rows.append(row)
      targets += t
      false_alarms += f
      if progress is not None:
        progress()
  return Analysis(thresholds, [t.result() for t in totals], rows, targets, false_alarms,
                  float(fa_bound_e6), all(s.image is not None for s in samples))


def pd_fa_area(fa_e6: Sequence[float], pd: Sequence[float | None],
               bound_e6: float = FA_BOUND_E6) -> float | None:
  """The normalised area under the Pd-Fa curve up to ``bound_e6`` (module docstring):
  ``best`` is a step function of Fa, so the integral is a sum. None without targets."""
  if any(p is None for p in pd):
    return None
  fa, pd = np.asarray(fa_e6, np.float64), np.asarray(pd, np.float64)
  order = np.argsort(fa, kind='stable')
  best = np.maximum.accumulate(pd[order])
  steps = np.clip(np.append(fa[order], bound_e6), 0.0, bound_e6)
  return float(np.sum(best * np.diff(steps)) / bound_e6)


def area_bucket(area: int) -> int:
  """Index into :data:`AREA_BUCKETS` of a target of ``area`` px."""
  return int(np.searchsorted([top for _, top in AREA_BUCKETS[:-1]], area, side='left'))


def contrast_bucket(contrast: float | None) -> int:
  """Index into :data:`CONTRAST_LABELS` (the last, 'n/a', for an unknown contrast)."""
  if contrast is None:
    return len(CONTRAST_LABELS) - 1
  return int(np.searchsorted(CONTRAST_EDGES, contrast, side='right'))


def buckets(targets: Sequence[Case], by: str) -> list[dict]:
  """Per bucket of ``by`` ('size' or 'contrast'): the targets in it, how many were found
  and missed, Pd (None for an empty bucket) and the mean per-target IoU (missed ones
  count 0). The contrast bucket 'n/a' is listed only when it holds targets."""
  if by == 'size':
    labels, which = [label for label, _ in AREA_BUCKETS], lambda c: area_bucket(c.area)
  elif by == 'contrast':
    labels, which = list(CONTRAST_LABELS), lambda c: contrast_bucket(c.contrast)
  else:
    raise ValueError(f'by must be size or contrast, got {by!r}')
  rows = []
  for b, label in enumerate(labels):
    members = [c for c in targets if which(c) == b]
    if label == 'n/a' and not members:
      continue
    found = sum(c.found for c in members)
    rows.append({'bucket': label, 'targets': len(members), 'matched': found,
                 'missed': len(members) - found,
                 'pd': found / len(members) if members else None,
                 'mean_iou': (float(np.mean([c.iou for c in members])) if members
                              else None)})
  return rows


def worst_first(rows: Sequence[ImageRow]) -> list[ImageRow]:
  """Images worst first: most missed targets, then most false-alarm pixels, then lowest
  IoU (an image with nothing to find and nothing predicted counts as IoU 1), then stem."""
  return sorted(rows, key=lambda r: (-r.missed, -r.fa_pixels,
                                     1.0 if r.iou is None else r.iou, r.stem))


def worst_missed(targets: Sequence[Case]) -> list[Case]:
  """Missed targets, clearest first: highest contrast (unknown last), then largest."""
  missed = [c for c in targets if not c.found]
  return sorted(missed, key=lambda c: (c.contrast is None, -(c.contrast or 0.0), -c.area,
                                       c.index, c.box))


def worst_false_alarms(false_alarms: Sequence[Case]) -> list[Case]:
  """False alarms, most pixels first (what Fa counts), then highest probability."""
  return sorted(false_alarms, key=lambda c: (-c.area, -c.p_max, c.index, c.box))


def gallery_layout(n: int) -> tuple[int, int, int, int]:
  """(rows, columns, height, width) of a gallery of ``n`` panels (one empty row for 0)."""
  columns = max(1, min(n, GALLERY_COLUMNS))
  rows = max(1, math.ceil(n / columns))
  side = GALLERY_TILE + 2 * GALLERY_BORDER
  return (rows, columns, GALLERY_GAP + rows * (side + GALLERY_CAPTION + GALLERY_GAP),
          GALLERY_GAP + columns * (side + GALLERY_GAP))


def _regions(sample: Sample, distance_threshold: float):
  """(background grey uint8, [(bool mask, colour)]) of an image at the operating point:
  false alarms yellow, missed targets blue, matched predictions red (drawn in that order,
  so red wins where they touch), as :func:`limijax.predict.comparison` colours them."""
  score = sample.score()
  pred = score > cutoffs([OPERATING_POINT], sample.logits)[0]
  m = metrics.match_components(pred, sample.gt, distance_threshold)
  hit = np.isin(m.pred_labels, 1 + np.flatnonzero(m.pred_matched))
  missed = np.isin(m.gt_labels, 1 + np.flatnonzero(m.gt_match < 0))
  background = sample.image
  if background is None:  # no grey image: show the probability map
    background = np.round(255.0 * sample.probability(score)).astype(np.uint8)
  return background, [((m.pred_labels > 0) & ~hit, FALSE_ALARM_COLOUR),
                      (missed, MISS_COLOUR), (hit, HIT_COLOUR)]


def _tile(background: np.ndarray, regions, box: tuple[int, int, int, int]) -> np.ndarray:
  """The GALLERY_TILE square RGB tile of the neighbourhood of ``box``, zoomed, with each
  region's pixels outlined from the inside one screen pixel wide."""
  h, w = background.shape
  r0, r1, c0, c1 = box
  side = max(GALLERY_CROP, r1 - r0 + 4, c1 - c0 + 4)
  zoom = max(1, GALLERY_TILE // side)
  side = GALLERY_TILE // zoom

  def span(lo, hi, size):  # side px around [lo, hi), inside [0, size)
    start = int(np.clip((lo + hi - side) // 2, 0, max(0, size - side)))
    return slice(start, min(size, start + side))

  window = (span(r0, r1, h), span(c0, c1, w))
  up = lambda a: np.repeat(np.repeat(a[window], zoom, axis=0), zoom, axis=1)
  tile = np.empty((GALLERY_TILE, GALLERY_TILE, 3), np.uint8)
  tile[...] = PANEL_COLOUR
  grey = up(background)
  view = tile[:grey.shape[0], :grey.shape[1]]
  view[...] = grey[..., None]
  for region, colour in regions:
    big = up(region)
    view[big & ~ndimage.binary_erosion(big, structure=_EIGHT)] = colour
  return tile


def _caption(case: Case) -> list[str]:
  contrast = 'n/a' if case.contrast is None else f'{case.contrast:.1f}'
  return [case.stem, f'{case.area} px  SCR {contrast}', f'p max {case.p_max:.2f}']


def gallery(cases: Sequence[Case], samples: Sequence[Sample], colour,
            distance_threshold: float = 3.0) -> np.ndarray:
  """RGB uint8 picture of ``cases`` (in order, GALLERY_COLUMNS a row): each a zoomed tile
  of its neighbourhood (:func:`_regions` colours), framed in ``colour``, captioned with
  the image's stem, the area, the contrast (SCR) and the highest probability inside.
  ``samples[case.index]`` is the case's image. Size: :func:`gallery_layout`."""
  _, columns, height, width = gallery_layout(len(cases))
  picture = Image.new('RGB', (width, height), PANEL_COLOUR)
  draw = ImageDraw.Draw(picture)
  font = ImageFont.load_default(size=10)
  side = GALLERY_TILE + 2 * GALLERY_BORDER
  if not cases:
    draw.text((GALLERY_GAP, GALLERY_GAP + side // 2), 'none', fill=_CAPTION_COLOUR, font=font)
  drawn: dict[int, tuple] = {}  # image index -> its regions, worked out once
  for k, case in enumerate(cases):
    if case.index not in drawn:
      drawn[case.index] = _regions(samples[case.index], distance_threshold)
    top = GALLERY_GAP + (k // columns) * (side + GALLERY_CAPTION + GALLERY_GAP)
    left = GALLERY_GAP + (k % columns) * (side + GALLERY_GAP)
    frame = np.empty((side, side, 3), np.uint8)
    frame[...] = colour
    frame[GALLERY_BORDER:-GALLERY_BORDER, GALLERY_BORDER:-GALLERY_BORDER] = _tile(
        *drawn[case.index], case.box)
    picture.paste(Image.fromarray(frame), (left, top))
    for line_no, line in enumerate(_caption(case)):
      while len(line) > 1 and draw.textlength(line, font=font) > side:
        line = line[:-1]  # cut a long stem to the panel's width
      draw.text((left, top + side + 1 + 11 * line_no), line, fill=_CAPTION_COLOUR, font=font)
  return np.asarray(picture)
