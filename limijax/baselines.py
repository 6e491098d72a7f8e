"""The classical white top-hat detector, the floor every learned model must clear.

The top-hat keeps what is brighter than its surroundings and smaller than the
structuring element: ``image - opening(image)``. A pixel is declared target where the
response exceeds ``mean + k * std`` of that image's response. Its two knobs (element
size and ``k``) are tuned on the validation split to maximise mIoU, the same rule that
picks a network's checkpoint, so the comparison is fair rather than a straw man.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

DEFAULT_SIZES = (3, 5, 7, 9, 11, 15)
DEFAULT_KS = tuple(float(k) for k in np.arange(1.0, 12.01, 0.5))


def disk(size: int) -> np.ndarray:
  """Boolean disk footprint ``size`` pixels across (radius ``size // 2``)."""
  if size < 1:
    raise ValueError(f'structuring element size must be >= 1, got {size}')
  r = size // 2
  yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
  return yy * yy + xx * xx <= r * r  # the same set as skimage.morphology.disk(r)


def tophat_response(image: np.ndarray, size: int) -> np.ndarray:
  """White top-hat ``image - opening(image)`` with a disk of diameter ``size``; float32."""
  image = np.asarray(image, np.float32)
  if image.ndim != 2:
    raise ValueError(f'tophat_response expects a 2-D grey image, got shape {image.shape}')
  return ndimage.white_tophat(image, footprint=disk(size), mode='reflect')


def _thresholds(response: np.ndarray, ks: np.ndarray) -> np.ndarray:
  return response.mean() + ks * response.std()


def tophat_detect(image: np.ndarray, size: int, k: float) -> np.ndarray:
  """Boolean target map: top-hat response above ``mean + k * std`` of this image's response."""
  response = tophat_response(image, size)
  return response > _thresholds(response, np.float32(k))


def _as_bool_mask(mask: np.ndarray) -> np.ndarray:
  mask = np.asarray(mask)
  if mask.dtype == bool:
    return mask
  # {0, 1} masks from the generator and {0, 255} masks from disk both binarise here.
  return mask > (127 if mask.max() > 1 else 0)


def tune_tophat(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                sizes: Iterable[int] = DEFAULT_SIZES,
                ks: Iterable[float] = DEFAULT_KS) -> dict:
  """Pick the ``(size, k)`` with the best mIoU over ``images`` (the validation split).

  mIoU here is the field's: intersections and unions summed over the set, divided once.
  Each size's response is computed once per image and every ``k`` is swept on it.
  Ties go to the first pair in the grid, so the result is deterministic.
  """
  images = list(images)
  masks = [_as_bool_mask(m) for m in masks]
  if not images or len(images) != len(masks):
    raise ValueError(f'tune_tophat needs as many masks as images, got {len(images)} and {len(masks)}')
  sizes = [int(s) for s in sizes]
  ks = np.asarray(list(ks), np.float32)
  best = dict(size=sizes[0], k=float(ks[0]), val_miou=-1.0)
  for size in sizes:
    inter = np.zeros(len(ks), np.int64)
    union = np.zeros(len(ks), np.int64)
    for image, gt in zip(images, masks):
      response = tophat_response(image, size)
      pred = response[None] > _thresholds(response, ks)[:, None, None]
      inter += np.count_nonzero(pred & gt[None], axis=(1, 2))
      union += np.count_nonzero(pred | gt[None], axis=(1, 2))
    miou = inter / np.maximum(union, 1)
    i = int(np.argmax(miou))
    if miou[i] > best['val_miou']:
      best = dict(size=size, k=float(ks[i]), val_miou=float(miou[i]))
  return best


def tophat_metrics(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], size: int, k: float) -> dict:
  """The field's metrics (mIoU, nIoU, Pd, Fa...) of the top-hat with fixed ``size`` and ``k``."""
  from limijax.metrics import MetricAccumulator  # imported here so tuning alone needs no metrics

  acc = MetricAccumulator()
  for image, mask in zip(images, masks):
    acc.update(tophat_detect(image, size, k), _as_bool_mask(mask))
  return acc.result()
