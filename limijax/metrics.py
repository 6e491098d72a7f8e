r"""The metrics of infrared small target detection, computed as the field computes them.

Papers compare numbers across repositories, so these follow the field's reference code
(the BasicIRSTD toolbox after its January 2024 fix, and the ACM / DNA-Net / SCTransNet
lineage for nIoU) rather than textbook definitions. Everything here is numpy and scipy on
the host; masks are scored at the image's original size.

Binarisation (done by the caller, with the helpers below):

* a prediction pixel is a target when its probability is ``> 0.5``, which is the same as
  its logit being ``> 0`` (:func:`binarize_probabilities`, :func:`binarize_logits`);
* a ground-truth mask is read as 8-bit and a pixel is a target when its value is ``> 127``
  (:func:`binarize_mask`), which also handles anti-aliased 0/255 masks.

Metrics of a set of images, accumulated with :class:`MetricAccumulator`:

* ``miou``: the target-class IoU of the whole set, ``sum |P & G| / sum |P | G|`` with the
  sums taken over all images first and one division at the end (papers call this "mIoU").
  It is not the mean of per-image IoUs. If the whole set has neither a target nor a
  predicted pixel the union is empty and we report 0.0.
* ``niou``: the mean over images of ``|P & G| / (|P | G| + eps)`` with ``eps`` the float64
  machine epsilon, as in the reference code. The ``eps`` changes nothing measurable when
  the union is non-empty; an image with neither a target nor a predicted pixel scores 0,
  exactly as in the reference code, so test sets with empty images get a lower nIoU than
  one might expect. ``niou_nonempty`` is the same mean taken only over images whose union
  is non-empty, for readers who want the other convention.
* ``pd`` and ``fa`` (probability of detection, false-alarm rate): per image, label the
  connected components of the prediction and of the ground truth with 8-connectivity
  (diagonal neighbours join), and take each component's centroid as the mean (row, col) of
  its pixels. Then, for each ground-truth component in label order, the first predicted
  component in label order that is still unmatched and whose centroid lies at Euclidean
  distance strictly less than ``distance_threshold`` (3 px) is its match; a predicted
  component matches at most one target (:func:`match_components` returns this matching
  component by component; the pictures of :mod:`limijax.predict` use it too).
  ``pd`` = matched targets / all ground-truth components of the set, and ``None`` (JSON
  ``null``) when the set has no target at all: there is nothing to detect, and 0 would
  read as "every target missed". ``fa`` = pixels of all unmatched predicted components /
  all pixels of the set (the sum of H x W), and ``fa_e6`` is ``fa * 1e6``, the unit papers
  print.
* ``fa_pixel`` = predicted target pixels that are not ground-truth pixels, ``|P \ G|``,
  summed over the set / all pixels of the set (``fa_pixel_e6`` = ``fa_pixel * 1e6``). This
  is Limi-Net's eq. 7 read literally (falsely predicted pixels over all pixels). The
  numbers papers print, in the BasicIRSTD / DNA-Net lineage that Limi-Net compares with,
  come from the component-based ``fa`` above, so our headline "Fa" is ``fa``; the two
  differ by the surplus pixels of matched components (counted by ``fa_pixel``, not by
  ``fa``) and by the target pixels inside unmatched components (the other way round).
* ``fa_per_mp`` = unmatched predicted components (false alarms counted as objects, as a
  detector's user meets them) per million pixels of the set: how many false detections a
  megapixel frame holds on average, whatever their size.

The distance test is exact. A component's centroid is (row sum / area, col sum / area) of
integer pixel coordinates, so for a target with area ``a`` and sums ``(R_g, C_g)`` and a
prediction with area ``b`` and sums ``(R_p, C_p)`` the distance is strictly less than
``t = p / q`` (the float threshold as an exact fraction; 3 / 1 by default) exactly when::

    q^2 * ((b R_g - a R_p)^2 + (b C_g - a C_p)^2)  <  p^2 * (a b)^2

which we evaluate in integers: int64 when a bound on both sides (from the largest areas
and the image size) fits, Python integers otherwise (for the pairs that floating point
puts near the threshold), so it never overflows. The
reference code computes the centroids and ``np.linalg.norm`` in floating point, which
can answer either way when the distance is exactly 3 px: for a target centroid at
(2.8, 2.4) and a prediction at (1, 0) the distance is exactly 3 (1.8^2 + 2.4^2 = 9), yet
``np.linalg.norm`` of the float difference gives 2.9999999999999996 and the reference
counts a hit. Here exactly 3 px never matches, which is what "strictly less than 3 px"
says; only distances within floating-point rounding of 3 px can differ from the
reference.

Formatting: :func:`format_metrics` gives the one-line form every command prints, e.g.
``mIoU 0.6628  nIoU 0.6222  Pd 0.9003  Fa 144.96e-6``, with ``Pd n/a`` for a set with no
target.

Bugs of popular repositories that this module avoids on purpose:

* removing matched predictions by comparing areas, so that a false alarm with the same
  pixel count as a matched target vanishes; we drop matched components by identity;
* averaging per-image IoU and calling it mIoU;
* thresholding logits at 0.5, or probabilities at 0;
* 4-connectivity, which splits a diagonal streak into several targets.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import numpy as np
from scipy import ndimage

# Reference nIoU code divides by ``np.spacing(1) + union``; we keep the same eps so an
# empty image scores exactly what it scores there (0).
_NIOU_EPS = float(np.spacing(1))

# 8-connectivity: the centre pixel's whole 3x3 neighbourhood, diagonals included.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def binarize_logits(logits) -> np.ndarray:
  """Target where the logit is > 0 (probability > 0.5); never threshold logits at 0.5."""
  return np.asarray(logits) > 0


def binarize_probabilities(p, threshold: float = 0.5) -> np.ndarray:
  """Target where the probability is > ``threshold`` (strictly greater)."""
  return np.asarray(p) > threshold


def binarize_mask(mask_uint8) -> np.ndarray:
  """Target where an 8-bit ground-truth value is > 127 (0/255 masks, anti-aliased too).

  Only integer arrays on the 0..255 scale are accepted: a bool mask or a float mask in
  [0, 1] would silently come out empty, so those raise ``ValueError`` instead.
  """
  mask = np.asarray(mask_uint8)
  if mask.dtype == bool or not np.issubdtype(mask.dtype, np.integer):
    raise ValueError(
        f'binarize_mask expects 8-bit integer values 0..255, got dtype {mask.dtype}')
  return mask > 127


def _as_mask(x, name: str) -> np.ndarray:
  """Check one binary image: bool, (H, W) or (H, W, 1)."""
  x = np.asarray(x)
  if x.dtype != bool:
    # Refusing non-bool input keeps the threshold decision with the caller, where the
    # logit-vs-probability convention is known (see the binarize_* helpers).
    raise ValueError(
        f'{name} must be a bool array (use binarize_logits / binarize_probabilities / '
        f'binarize_mask), got dtype {x.dtype}')
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 2:
    raise ValueError(f'{name} must have shape (H, W), got {x.shape}')
  return x


def _components(mask: np.ndarray):
  """8-connected components of a mask: (labels, areas, row sums, col sums).

  ``areas[k]`` and the sums of the (row, col) coordinates of its pixels describe label
  ``k + 1``, all int64; labels run in raster order of each component's first pixel, the
  order skimage's ``label`` gives. The sums are taken in float64 by ``bincount`` and are
  exact: every partial sum is an integer no larger than H * W * max(H, W) < 2^53 for any
  image below 200,000 px a side, and float64 represents all such integers exactly.
  """
  labels, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
  # Only the labelled pixels are visited: small-target masks are almost all background.
  where = np.flatnonzero(labels)
  flat = labels.ravel()[where] - 1
  rows, cols = np.divmod(where, mask.shape[1])
  areas = np.bincount(flat, minlength=n).astype(np.int64)
  row_sum = np.bincount(flat, weights=rows, minlength=n)
  col_sum = np.bincount(flat, weights=cols, minlength=n)
  return labels, areas, row_sum.astype(np.int64), col_sum.astype(np.int64)


def _check_threshold(distance_threshold) -> float:
  t = float(distance_threshold)
  if not (math.isfinite(t) and t > 0):
    raise ValueError(f'distance_threshold must be a finite number > 0, got {distance_threshold}')
  return t


def _close(gt, pred, distance_threshold: float, max_coord: int) -> np.ndarray:
  """(num targets, num predictions) bool: centroid distance strictly < the threshold.

  ``gt`` and ``pred`` are (areas, row sums, col sums) of int64 arrays. Exact integer
  arithmetic (see the module docstring): with ``t = p / q``, target (a, R_g, C_g) and
  prediction (b, R_p, C_p) are close when
  ``q^2 ((b R_g - a R_p)^2 + (b C_g - a C_p)^2) < p^2 (a b)^2``.

  Overflow: a coordinate sum is at most area * ``max_coord``, so ``|b R_g - a R_p|`` is at
  most ``A B max_coord`` with A, B the largest areas; both sides are then bounded by
  ``worst`` below. When that fits int64 we compute in int64; otherwise (huge components
  in big images) in Python's unbounded integers, for the pairs that floating point cannot
  rule out only: a float centroid is within ``max_coord * 2^-52`` of the exact one, so
  the float squared distance is within far less than the margin below of the exact one
  near the threshold, and a pair beyond ``t^2 + margin`` in floats is not close exactly.
  """
  p, q = float(distance_threshold).as_integer_ratio()  # exact: floats are fractions
  a_max, b_max = int(gt[0].max()), int(pred[0].max())
  diff_bound = a_max * b_max * max(max_coord, 1)
  worst = max(q * q * 2 * diff_bound * diff_bound, p * p * (a_max * b_max) ** 2)
  if worst < 2 ** 63:
    a, rg, cg = (x[:, None] for x in gt)
    b, rp, cp = (x[None, :] for x in pred)
    dr = b * rg - a * rp
    dc = b * cg - a * cp
    ab = a * b
    return q * q * (dr * dr + dc * dc) < p * p * (ab * ab)
  t = float(distance_threshold)
  centroid = lambda c: (c[1] / c[0], c[2] / c[0])
  (gr, gc), (pr, pc) = centroid(gt), centroid(pred)
  d2 = (gr[:, None] - pr[None, :]) ** 2 + (gc[:, None] - pc[None, :]) ** 2
  close = np.zeros(d2.shape, dtype=bool)
  for i, j in zip(*np.nonzero(d2 < t * t + 1e-6 * (1 + t * t))):  # exact for these
    a, rg, cg = (int(x[i]) for x in gt)
    b, rp, cp = (int(x[j]) for x in pred)
    close[i, j] = q * q * ((b * rg - a * rp) ** 2 + (b * cg - a * cp) ** 2) < p * p * (a * b) ** 2
  return close


@dataclasses.dataclass(frozen=True)
class ComponentMatch:
  """The Pd/Fa matching of one image, component by component.

  ``pred_labels`` / ``gt_labels``: (H, W) int label images, 0 for background and k for
  component k (8-connected, raster order of first pixel). ``pred_areas`` / ``gt_areas``:
  pixel counts, index k - 1 for label k. ``gt_match[k - 1]``: the 0-based index of the
  predicted component matched to target k (its label minus 1), or -1 if the target was
  missed. ``pred_matched[k - 1]``: whether predicted component k is some target's match;
  an unmatched one is a false alarm.
  """
  pred_labels: np.ndarray
  gt_labels: np.ndarray
  pred_areas: np.ndarray
  gt_areas: np.ndarray
  gt_match: np.ndarray
  pred_matched: np.ndarray

  @property
  def num_targets(self) -> int:
    return len(self.gt_areas)

  @property
  def num_matched(self) -> int:
    return int(np.count_nonzero(self.gt_match >= 0))

  @property
  def num_false_alarm_components(self) -> int:
    return int(np.count_nonzero(~self.pred_matched))

  @property
  def num_false_alarm_pixels(self) -> int:
    return int(self.pred_areas[~self.pred_matched].sum())


def match_components(pred, gt, distance_threshold: float = 3.0) -> ComponentMatch:
  """Match the predicted components of one image to its targets, as Pd and Fa count them.

  ``pred`` and ``gt`` are bool (H, W) masks. Each target, in label order, takes the first
  still-unmatched predicted component, in label order, whose centroid is strictly less
  than ``distance_threshold`` px away (compared exactly, see the module docstring).
  """
  pred = _as_mask(pred, 'pred')
  gt = _as_mask(gt, 'gt')
  if pred.shape != gt.shape:
    raise ValueError(f'pred shape {pred.shape} differs from gt shape {gt.shape}')
  threshold = _check_threshold(distance_threshold)
  pred_labels, pred_areas, pred_rows, pred_cols = _components(pred)
  gt_labels, gt_areas, gt_rows, gt_cols = _components(gt)
  gt_match = np.full(len(gt_areas), -1, dtype=np.int64)
  pred_matched = np.zeros(len(pred_areas), dtype=bool)
  if len(gt_areas) and len(pred_areas):
    close = _close((gt_areas, gt_rows, gt_cols), (pred_areas, pred_rows, pred_cols),
                   threshold, max(pred.shape) - 1)
    for g in range(len(gt_areas)):  # ground truth in label order ...
      candidates = np.flatnonzero(close[g] & ~pred_matched)
      if candidates.size:  # ... takes the first free predicted component in label order
        pred_matched[candidates[0]] = True
        gt_match[g] = candidates[0]
  # False alarms are the unmatched components themselves (by identity, not by area).
  return ComponentMatch(pred_labels, gt_labels, pred_areas, gt_areas, gt_match, pred_matched)


class MetricAccumulator:
  """Sums over a set of images, from which the set's metrics are computed once.

  Feed one image at a time with :meth:`update`; combine shards with :meth:`merge`;
  read the metrics with :meth:`result`. See the module docstring for the definitions.
  """

  # The sums a set's metrics are computed from (floats: niou_sum, niou_nonempty_sum).
  SUMS = ('num_images', 'num_pixels', 'intersection', 'union', 'niou_sum',
          'niou_nonempty_sum', 'num_nonempty_images', 'num_targets', 'num_matched_targets',
          'num_false_alarm_components', 'num_false_alarm_pixels', 'num_pred_pixels_outside_gt')

  def __init__(self, distance_threshold: float = 3.0):
    self.distance_threshold = _check_threshold(distance_threshold)
    self.num_images = 0
    self.num_pixels = 0
    self.intersection = 0
    self.union = 0
    self.niou_sum = 0.0
    self.niou_nonempty_sum = 0.0
    self.num_nonempty_images = 0
    self.num_targets = 0
    self.num_matched_targets = 0
    self.num_false_alarm_components = 0
    self.num_false_alarm_pixels = 0
    self.num_pred_pixels_outside_gt = 0  # |P \ G|, for fa_pixel

  def update(self, pred: np.ndarray, gt: np.ndarray, num_pixels: int | None = None) -> None:
    """Add one image: ``pred`` and ``gt`` are bool arrays of the same (H, W) shape. They
    may be a window of the image that holds every predicted and every target pixel (the
    components, their matching and the sums are then the image's own): ``num_pixels`` is
    then the whole image's pixel count, which Fa divides by."""
    pred = _as_mask(pred, 'pred')
    gt = _as_mask(gt, 'gt')
    if pred.shape != gt.shape:
      raise ValueError(f'pred shape {pred.shape} differs from gt shape {gt.shape}')
    match = match_components(pred, gt, self.distance_threshold)
    inter = int(np.count_nonzero(pred & gt))
    union = int(np.count_nonzero(pred | gt))
    self.num_images += 1
    self.num_pixels += pred.size if num_pixels is None else int(num_pixels)
    self.intersection += inter
    self.union += union
    self.niou_sum += inter / (union + _NIOU_EPS)
    if union:
      self.niou_nonempty_sum += inter / union
      self.num_nonempty_images += 1
    self.num_pred_pixels_outside_gt += int(np.count_nonzero(pred & ~gt))
    self.num_targets += match.num_targets
    self.num_matched_targets += match.num_matched
    self.num_false_alarm_components += match.num_false_alarm_components
    self.num_false_alarm_pixels += match.num_false_alarm_pixels

  def merge(self, other: 'MetricAccumulator') -> None:
    """Add another accumulator's sums (e.g. from another shard of the same set)."""
    if other.distance_threshold != self.distance_threshold:
      raise ValueError('cannot merge accumulators with different distance thresholds: '
                       f'{self.distance_threshold} and {other.distance_threshold}')
    for name in self.SUMS:
      setattr(self, name, getattr(self, name) + getattr(other, name))

  def result(self) -> dict:
    """The set's metrics as plain Python numbers (JSON-ready)."""
    fa = self.num_false_alarm_pixels / self.num_pixels if self.num_pixels else 0.0
    fa_pixel = (self.num_pred_pixels_outside_gt / self.num_pixels
                if self.num_pixels else 0.0)
    return {
        'miou': self.intersection / self.union if self.union else 0.0,
        'niou': self.niou_sum / self.num_images if self.num_images else 0.0,
        'niou_nonempty': (self.niou_nonempty_sum / self.num_nonempty_images
                          if self.num_nonempty_images else 0.0),
        # No target in the set: nothing to detect, so no Pd (JSON null), not 0.
        'pd': self.num_matched_targets / self.num_targets if self.num_targets else None,
        'fa': fa,
        'fa_e6': fa * 1e6,
        'fa_pixel': fa_pixel,
        'fa_pixel_e6': fa_pixel * 1e6,
        'fa_per_mp': (self.num_false_alarm_components / self.num_pixels * 1e6
                      if self.num_pixels else 0.0),
        'num_images': self.num_images,
        'num_targets': self.num_targets,
        'num_matched_targets': self.num_matched_targets,
        'num_false_alarm_components': self.num_false_alarm_components,
        'num_false_alarm_pixels': self.num_false_alarm_pixels,
        'num_pred_pixels_outside_gt': self.num_pred_pixels_outside_gt,
        'num_pixels': self.num_pixels,
    }


def score(preds: Iterable[np.ndarray], gts: Iterable[np.ndarray],
          distance_threshold: float = 3.0) -> dict:
  """Metrics of paired bool masks (any iterables, e.g. lists or (N, H, W) arrays)."""
  acc = MetricAccumulator(distance_threshold)
  for pred, gt in zip(preds, gts, strict=True):
    acc.update(pred, gt)
  return acc.result()


# How format_metrics writes each metric: (label, key of the value, format).
_FORMATS = {
    'miou': ('mIoU', 'miou', '{:.4f}'),
    'niou': ('nIoU', 'niou', '{:.4f}'),
    'pd': ('Pd', 'pd', '{:.4f}'),
    'fa': ('Fa', 'fa_e6', '{:.2f}e-6'),
    'fa_pixel': ('Fa_pixel', 'fa_pixel_e6', '{:.2f}e-6'),
    'fa_per_mp': ('FA/MP', 'fa_per_mp', '{:.2f}'),
}


def format_metrics(m: dict, names: Iterable[str] = ('miou', 'niou', 'pd', 'fa')) -> str:
  """One line of metrics as the commands print them.

  ``format_metrics(result)`` gives e.g. ``mIoU 0.6628  nIoU 0.6222  Pd 0.9003  Fa
  144.96e-6``; ``names`` picks and orders the metrics (of miou, niou, pd, fa, fa_pixel, fa_per_mp).
  A value that is ``None`` (``pd`` of a set without targets) prints as ``n/a``.
  """
  parts = []
  for name in names:
    label, key, fmt = _FORMATS[name]
    value = m[key]
    parts.append(f'{label} {"n/a" if value is None else fmt.format(value)}')
  return '  '.join(parts)
