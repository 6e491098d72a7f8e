"""Grain input pipelines: augmented training batches, padded evaluation images, previews.

Records come from a random-access source: ``len(src)`` and
``src[i] -> {'image': uint8 (H, W), 'mask': uint8 (H, W) in {0, 1}, 'id': str}``.

Training, per sample (the usual IRSTD recipe plus the paper's ITS, section 3.2):

1. a random ``image_size`` square crop that contains a target with probability
   ``crop_target_prob``; an image smaller than the crop sits at a random place on a
   canvas of the mean grey, i.e. it is zero-padded in normalised space;
2. horizontal flip, vertical flip and transpose, each with probability 0.5;
3. ITS pseudo targets, painted on the crop's own image pixels (never on the padding
   around a small image) before normalisation;
4. normalisation ``(x - mean) / std``.

Seeds and epochs: the shuffle, the crop/flip draws and the ITS draws each get their own
seed, derived from ``seed``. The pipeline is ``shuffle -> crop/flip -> ITS -> normalise
-> batch -> repeat`` on a Grain ``MapDataset``: ``repeat`` hands every later stage the
global sample index ``epoch * n + i``, so the shuffle uses a different permutation in
every epoch and the random draws of a sample depend only on (seed, epoch, i). Each
epoch is batched on its own (``drop_remainder``), so an epoch is exactly
``steps_per_epoch(n, batch_size)`` batches. The iterator's state is the index of the
next batch, which makes ``get_state``/``set_state`` resume exactly.

Evaluation images keep their size: each is normalised and zero-padded (in normalised
space, as during training) at the bottom and right to a multiple of 16, so that every
downsampling stage of the model divides it evenly; :func:`crop_to_size` cuts
predictions back.

:class:`Prefetch` draws an epoch's batches in a background thread while the training
step runs.
"""

from __future__ import annotations

import math
import queue
import threading
from typing import Any, Callable, Iterator, Sequence

from absl import flags
import grain
import numpy as np
from scipy import ndimage

from limijax import its as its_lib
from limijax.errors import UserError

# Labels for the sub-seeds derived from the user's seed, one per random stage.
_SHUFFLE, _CROP, _ITS = 0, 1, 2
# Batches each process reads ahead. Small: a 256x256 batch of 10 is 5 MB, and the
# training step, not the pipeline, is the bottleneck.
_PREFETCH_BATCHES = 4


def _sub_seed(seed: int, stage: int) -> int:
  # Hashing (seed, stage) rather than seed + stage keeps runs with neighbouring seeds
  # (multi-seed runs use seed, seed + 1, ...) from sharing shuffles: Grain's shuffle
  # itself uses seed + epoch for each epoch.
  return int(np.random.SeedSequence([int(seed), stage]).generate_state(1)[0])


def plane(a) -> np.ndarray:
  """(H, W) view of a record's image or mask; a trailing channel axis of 1 is dropped."""
  a = np.asarray(a)
  return a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a


def steps_per_epoch(n: int, batch_size: int) -> int:
  """Training batches in one epoch: the last incomplete batch is dropped."""
  return n // batch_size


# --------------------------------------------------------------------------- training


def _pick_target_pixel(mask: np.ndarray, rng: np.random.Generator):
  """A random pixel of a random target (each target equally likely), or None."""
  labels, count = ndimage.label(mask > 0)
  if count == 0:
    return None
  ys, xs = np.nonzero(labels == int(rng.integers(1, count + 1)))
  j = int(rng.integers(len(ys)))
  return int(ys[j]), int(xs[j])


def random_crop(image: np.ndarray, mask: np.ndarray, size: int,
                rng: np.random.Generator, *, crop_target_prob: float,
                pad_value: float, with_valid: bool = False):
  """A (size, size) float32 crop of `image` and uint8 crop of `mask`.

  With probability `crop_target_prob` (and if the mask has a target) the crop contains
  a pixel of a randomly chosen target. A side shorter than `size` is padded with
  `pad_value` (mask 0), the image at a random offset on the canvas. With `with_valid`
  a third value says where the image's own pixels are: None when the crop lies wholly
  inside the image, else a bool (size, size) plane, False on the padding.
  """
  h, w = image.shape
  # Canvas: the image, padded to at least `size`; (oy, ox) is the image's offset on it.
  ch, cw = max(h, size), max(w, size)
  oy, ox = int(rng.integers(ch - h + 1)), int(rng.integers(cw - w + 1))
  target = None
  if rng.random() < crop_target_prob:
    target = _pick_target_pixel(mask, rng)
  if target is None:
    y0, x0 = int(rng.integers(ch - size + 1)), int(rng.integers(cw - size + 1))
  else:
    ty, tx = target[0] + oy, target[1] + ox
    y0 = int(rng.integers(max(0, ty - size + 1), min(ty, ch - size) + 1))
    x0 = int(rng.integers(max(0, tx - size + 1), min(tx, cw - size) + 1))
  # Crop window in image coordinates, and where it lands in the output.
  iy0, ix0 = y0 - oy, x0 - ox
  sy0, sx0 = max(iy0, 0), max(ix0, 0)
  sy1, sx1 = min(iy0 + size, h), min(ix0 + size, w)
  if (sy0, sx0, sy1, sx1) == (iy0, ix0, iy0 + size, ix0 + size):
    out = (image[sy0:sy1, sx0:sx1].astype(np.float32), mask[sy0:sy1, sx0:sx1].astype(np.uint8))
    return (*out, None) if with_valid else out
  out_image = np.full((size, size), pad_value, np.float32)
  out_mask = np.zeros((size, size), np.uint8)
  valid = np.zeros((size, size), bool)
  dy, dx = sy0 - iy0, sx0 - ix0
  inside = np.s_[dy:dy + sy1 - sy0, dx:dx + sx1 - sx0]
  out_image[inside] = image[sy0:sy1, sx0:sx1]
  out_mask[inside] = mask[sy0:sy1, sx0:sx1]
  valid[inside] = True
  return (out_image, out_mask, valid) if with_valid else (out_image, out_mask)


def random_flips(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                 *more: np.ndarray | None):
  """Horizontal flip, vertical flip and transpose, each with probability 0.5; planes in
  ``more`` (None stays None) get the same flips and are returned after image and mask."""
  flips = rng.random(3) < 0.5
  planes = [image, mask, *more]
  for flip, op in zip(flips, (lambda p: p[:, ::-1], lambda p: p[::-1], lambda p: p.T)):
    if flip:
      planes = [None if p is None else op(p) for p in planes]
  return tuple(None if p is None else np.ascontiguousarray(p) for p in planes)


class CropAndFlip(grain.transforms.RandomMap):
  """Random (target-seeking) crop, then (with ``flips``) flips and transpose; keeps image
  and mask, and a ``valid`` plane (False on the padding) when the crop reaches past the
  image. ``flips=False`` (``data.flips``) is for a strict replication of the
  paper, which names no augmentation but ITS."""

  def __init__(self, size: int, crop_target_prob: float, pad_value: float,
               flips: bool = True):
    self.size = int(size)
    self.flips = bool(flips)
    self.crop_target_prob = float(crop_target_prob)
    self.pad_value = float(pad_value)

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    image, mask, valid = random_crop(
        plane(element['image']), plane(element['mask']), self.size, rng,
        crop_target_prob=self.crop_target_prob, pad_value=self.pad_value, with_valid=True)
    if self.flips:
      image, mask, valid = random_flips(image, mask, rng, valid)
    if valid is None:
      return {'image': image, 'mask': mask}
    return {'image': image, 'mask': mask, 'valid': valid}  # ITS paints only where True


class Normalise(grain.transforms.Map):
  """(x - mean) / std as float32 with a channel axis; mask to float32 {0, 1}."""

  def __init__(self, mean: float, std: float):
    self.mean, self.std = float(mean), float(std)

  def map(self, element: dict) -> dict:
    image = (np.asarray(element['image'], np.float32) - self.mean) / self.std
    mask = (np.asarray(element['mask']) > 0).astype(np.float32)
    return {'image': image[..., None], 'mask': mask[..., None]}


def _check_stats(mean: float, std: float) -> None:
  if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
    raise UserError(f'normalisation needs a finite mean and std > 0, got {mean}, {std}')


def _augmented(source, *, image_size: int, mean: float, seed: int,
               crop_target_prob: float, flips: bool = True) -> grain.MapDataset:
  """Shuffled, cropped and flipped samples (before ITS) on the 0..255 scale."""
  ds = grain.MapDataset.source(source).shuffle(seed=_sub_seed(seed, _SHUFFLE))
  # The pad value is the mean grey, so padding is zero after normalisation.
  return ds.random_map(CropAndFlip(image_size, crop_target_prob, mean, flips),
                       seed=_sub_seed(seed, _CROP))


def _with_its(ds: grain.MapDataset, seed: int, its_cfg: Any) -> grain.MapDataset:
  return ds.random_map(its_lib.ITS(its_cfg), seed=_sub_seed(seed, _ITS))


def make_train_iter(source, *, image_size: int, batch_size: int, mean: float,
                    std: float, seed: int, its_cfg: Any,
                    crop_target_prob: float = 0.5, flips: bool = True,
                    num_workers: int = 0) -> grain.DatasetIterator:
  """An endless iterator of training batches.

  Each batch is ``{'image': float32 (B, S, S, 1), 'mask': float32 (B, S, S, 1)}`` with
  S = image_size. Epochs follow one another (each reshuffled); the iterator's
  ``get_state()``/``set_state()`` resume it exactly. ``its_cfg`` is the ``data.its``
  config block (None disables ITS). With ``num_workers > 0`` the batches are made in
  that many processes, in the same order as with 0.
  """
  n = len(source)
  if steps_per_epoch(n, batch_size) < 1:
    raise UserError(f'batch_size={batch_size} is larger than the {n} training images')
  _check_stats(mean, std)
  ds = _augmented(source, image_size=image_size, mean=mean, seed=seed,
                  crop_target_prob=crop_target_prob, flips=flips)
  ds = _with_its(ds, seed, its_cfg).map(Normalise(mean, std))
  # batch() before repeat(): each epoch is batched on its own (see module docstring).
  ds = ds.batch(batch_size, drop_remainder=True).repeat()
  # One reading thread per process: the work is numpy on in-memory arrays and mostly
  # holds the GIL, so more threads do not help; the thread still overlaps with the step.
  it_ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=1, prefetch_buffer_size=_PREFETCH_BATCHES))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # Grain's worker processes read absl flags; outside `app.run` (notebooks, tests)
      # nobody has parsed them.
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=2))
  return iter(it_ds)


# ------------------------------------------------------------------------- evaluation


def pad_to_multiple(image: np.ndarray, multiple: int, value: float = 0.0) -> np.ndarray:
  """Pad the last two axes of `image` at the bottom/right up to a multiple."""
  h, w = image.shape[-2:]
  ph, pw = -h % multiple, -w % multiple
  if ph == 0 and pw == 0:
    return image
  pad = [(0, 0)] * (image.ndim - 2) + [(0, ph), (0, pw)]
  return np.pad(image, pad, constant_values=value)


def padded_hw(h: int, w: int, multiple: int = 16) -> tuple[int, int]:
  """(H, W) padded up to multiples of `multiple`, as :func:`pad_to_multiple` pads."""
  return h + -h % multiple, w + -w % multiple


def padded_size(record, multiple: int = 16) -> tuple[int, int]:
  """The (H, W) that :func:`eval_examples` gives a record's image."""
  return padded_hw(*plane(record['image']).shape, multiple)


def eval_examples(source, *, mean: float, std: float,
                  multiple: int = 16) -> Iterator[dict]:
  """Every record of `source`, in order, ready for the model.

  Yields ``{'image': float32 (1, Hp, Wp, 1), 'mask': bool (H, W), 'size': (H, W),
  'id': str}``: the image normalised, then padded with 0 (the mean grey, the same
  padding as small training crops) at the bottom and right to a multiple of
  `multiple`. Cut predictions back with :func:`crop_to_size`.
  """
  _check_stats(mean, std)
  for i in range(len(source)):
    rec = source[i]
    image = plane(rec['image'])
    h, w = image.shape
    norm = (image.astype(np.float32) - np.float32(mean)) / np.float32(std)
    norm = pad_to_multiple(norm, multiple, 0.0)
    yield {
        'image': norm[None, :, :, None],
        'mask': plane(rec['mask']) > 0,
        'size': (h, w),
        'id': str(rec.get('id', i)),
    }


def crop_to_size(pred, size: Sequence[int]):
  """Cut a padded prediction back to the image's (H, W).

  `pred` is (Hp, Wp), or channels-last (Hp, Wp, C) / (B, Hp, Wp, C); only the spatial
  axes change. Works for numpy and jax arrays.
  """
  h, w = int(size[0]), int(size[1])
  if pred.ndim == 2:
    return pred[:h, :w]
  return pred[..., :h, :w, :]


# ---------------------------------------------------------------------------- preview


def save_preview(source, path, *, image_size: int, mean: float, std: float, seed: int,
                 its_cfg: Any, n: int = 16, crop_target_prob: float = 0.5) -> None:
  """Write a PNG grid of the first `n` training samples of epoch 0, as the model sees
  them (after crop, flips and ITS), real targets outlined in cyan and ITS pseudo targets
  in orange."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  _check_stats(mean, std)
  before = _augmented(source, image_size=image_size, mean=mean, seed=seed,
                      crop_target_prob=crop_target_prob)
  after = _with_its(before, seed, its_cfg)
  n = min(n, len(source))
  cols = min(4, n)
  rows = max(1, math.ceil(n / cols))
  fig = Figure(figsize=(2.8 * cols, 2.9 * rows + 0.3), dpi=100, layout='constrained')
  # Grey scale fixed to the 0..255 range in normalised units, identical for every tile.
  lo, hi = (0.0 - mean) / std, (255.0 - mean) / std
  for k in range(rows * cols):
    ax = fig.add_subplot(rows, cols, k + 1)
    ax.set_axis_off()
    if k >= n:
      continue
    real = before[k]['mask'] > 0
    sample = after[k]
    pseudo = (sample['mask'] > 0) & ~real
    image = (sample['image'] - mean) / std
    ax.imshow(image, cmap='gray', vmin=lo, vmax=hi, interpolation='nearest')
    for m, colour in ((real, 'cyan'), (pseudo, 'orange')):
      if m.any():
        ax.contour(m.astype(np.float32), levels=[0.5], colors=colour, linewidths=0.8)
    n_real, n_pseudo = ndimage.label(real)[1], ndimage.label(pseudo)[1]
    ax.set_title(f'{k}: {n_real} real, {n_pseudo} ITS', fontsize=8)
  fig.suptitle('training samples (seed %d): real targets cyan, ITS pseudo targets orange'
               % seed, fontsize=9)
  fig.savefig(path)


# --------------------------------------------------------------------------- prefetch
class Prefetch:
  """The next ``n`` results of ``draw()``, made by a background thread at most ``depth``
  ahead of the consumer (:meth:`get`, in order).

  The training loop draws each epoch's batches this way: reading, augmenting and moving a
  batch to the device overlaps the device's work and the host's dispatch of the step
  before it, instead of following them. The thread stops after ``n``, so once an epoch's
  batches are consumed the input iterators stand exactly where drawing them one by one
  would leave them (their state goes into the checkpoint). An exception in ``draw`` is
  raised by the :meth:`get` that would have returned its result.
  """

  def __init__(self, draw: Callable[[], Any], n: int, depth: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._work, args=(draw, n), daemon=True,
                                    name='limijax-prefetch')
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _work(self, draw, n: int) -> None:
    try:
      for _ in range(n):
        if not self._put((draw(), None)):
          return
    except BaseException as e:  # pylint: disable=broad-except  (re-raised by get)
      self._put((None, e))

  def get(self):
    item, error = self._queue.get()
    if error is not None:
      raise error
    return item

  def close(self) -> None:
    """Stops the thread (after the batch it is drawing) and waits for it."""
    self._stop.set()
    self._thread.join()
