"""The metrics of infrared small target detection, computed as the field computes them.

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
  component matches at most one target. ``pd`` = matched targets / all ground-truth
  components of the set (0.0 if the set has no target). ``fa`` = pixels of all unmatched
  predicted components / all pixels of the set (the sum of H x W), and ``fa_e6`` is
  ``fa * 1e6``, the unit papers print.

Bugs of popular repositories that this module avoids on purpose:

* removing matched predictions by comparing areas, so that a false alarm with the same
  pixel count as a matched target vanishes; we drop matched components by identity;
* averaging per-image IoU and calling it mIoU;
* thresholding logits at 0.5, or probabilities at 0;
* 4-connectivity, which splits a diagonal streak into several targets.
"""

from __future__ import annotations

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


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """8-connected components of a mask: (labels, areas, centroids).

  ``areas[k]`` and ``centroids[k]`` (row, col) describe label ``k + 1``; labels run in
  raster order of each component's first pixel, the order skimage's ``label`` gives.
  """
  labels, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
  flat = labels.ravel()
  areas = np.bincount(flat, minlength=n + 1)[1:]
  rows, cols = np.indices(mask.shape)
  row_sum = np.bincount(flat, weights=rows.ravel(), minlength=n + 1)[1:]
  col_sum = np.bincount(flat, weights=cols.ravel(), minlength=n + 1)[1:]
  centroids = np.stack([row_sum / np.maximum(areas, 1), col_sum / np.maximum(areas, 1)],
                       axis=1)
  return labels, areas, centroids


def _match(pred: np.ndarray, gt: np.ndarray,
           distance_threshold: float) -> tuple[int, int, int, int]:
  """Pd/Fa counts of one image.

  Returns (targets, matched targets, unmatched predicted components, their pixels).
  """
  _, pred_areas, pred_centroids = _components(pred)
  _, gt_areas, gt_centroids = _components(gt)
  num_targets = len(gt_areas)
  matched = np.zeros(len(pred_areas), dtype=bool)
  num_matched = 0
  if num_targets and len(pred_areas):
    diff = gt_centroids[:, None, :] - pred_centroids[None, :, :]
    # sqrt of the sum of squares, as np.linalg.norm does in the reference, so a
    # centroid at exactly 3.0 px is compared as 3.0 and does not match.
    close = np.sqrt((diff ** 2).sum(axis=-1)) < distance_threshold
    for g in range(num_targets):  # ground truth in label order ...
      candidates = np.flatnonzero(close[g] & ~matched)
      if candidates.size:  # ... takes the first free predicted component in label order
        matched[candidates[0]] = True
        num_matched += 1
  # False alarms are the unmatched components themselves (by identity, not by area).
  unmatched = ~matched
  return (num_targets, num_matched, int(unmatched.sum()),
          int(pred_areas[unmatched].sum()))


class MetricAccumulator:
  """Sums over a set of images, from which the set's metrics are computed once.

  Feed one image at a time with :meth:`update`; combine shards with :meth:`merge`;
  read the metrics with :meth:`result`. See the module docstring for the definitions.
  """

  def __init__(self, distance_threshold: float = 3.0):
    self.distance_threshold = float(distance_threshold)
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

  def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
    """Add one image: ``pred`` and ``gt`` are bool arrays of the same (H, W) shape."""
    pred = _as_mask(pred, 'pred')
    gt = _as_mask(gt, 'gt')
    if pred.shape != gt.shape:
      raise ValueError(f'pred shape {pred.shape} differs from gt shape {gt.shape}')
    inter = int(np.count_nonzero(pred & gt))
    union = int(np.count_nonzero(pred | gt))
    self.num_images += 1
    self.num_pixels += pred.size
    self.intersection += inter
    self.union += union
    self.niou_sum += inter / (union + _NIOU_EPS)
    if union:
      self.niou_nonempty_sum += inter / union
      self.num_nonempty_images += 1
    targets, hits, fa_components, fa_pixels = _match(pred, gt, self.distance_threshold)
    self.num_targets += targets
    self.num_matched_targets += hits
    self.num_false_alarm_components += fa_components
    self.num_false_alarm_pixels += fa_pixels

  def merge(self, other: 'MetricAccumulator') -> None:
    """Add another accumulator's sums (e.g. from another shard of the same set)."""
    if other.distance_threshold != self.distance_threshold:
      raise ValueError('cannot merge accumulators with different distance thresholds: '
                       f'{self.distance_threshold} and {other.distance_threshold}')
    for name in ('num_images', 'num_pixels', 'intersection', 'union', 'niou_sum',
                 'niou_nonempty_sum', 'num_nonempty_images', 'num_targets',
                 'num_matched_targets', 'num_false_alarm_components',
                 'num_false_alarm_pixels'):
      setattr(self, name, getattr(self, name) + getattr(other, name))

  def result(self) -> dict:
    """The set's metrics as plain Python numbers (JSON-ready)."""
    fa = self.num_false_alarm_pixels / self.num_pixels if self.num_pixels else 0.0
    return {
        'miou': self.intersection / self.union if self.union else 0.0,
        'niou': self.niou_sum / self.num_images if self.num_images else 0.0,
        'niou_nonempty': (self.niou_nonempty_sum / self.num_nonempty_images
                          if self.num_nonempty_images else 0.0),
        'pd': self.num_matched_targets / self.num_targets if self.num_targets else 0.0,
        'fa': fa,
        'fa_e6': fa * 1e6,
        'num_images': self.num_images,
        'num_targets': self.num_targets,
        'num_matched_targets': self.num_matched_targets,
        'num_false_alarm_components': self.num_false_alarm_components,
        'num_false_alarm_pixels': self.num_false_alarm_pixels,
        'num_pixels': self.num_pixels,
    }


def score(preds: Iterable[np.ndarray], gts: Iterable[np.ndarray],
          distance_threshold: float = 3.0) -> dict:
  """Metrics of paired bool masks (any iterables, e.g. lists or (N, H, W) arrays)."""
  acc = MetricAccumulator(distance_threshold)
  for pred, gt in zip(preds, gts, strict=True):
    acc.update(pred, gt)
  return acc.result()
