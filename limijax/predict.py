"""Predict target masks with a trained run.

    python -m limijax.predict --workdir=DIR --input=IMAGE_OR_FOLDER --out=FOLDER [--mask_dir=M]
    python -m limijax.predict --backend=onnx --model=FILE.onnx --input=... --out=... [--mask_dir=M]

For each input image writes ``<stem>.png`` (the binary mask, 0/255, at the image's own
size) and ``<stem>_overlay.png`` (the grey image with every detected target outlined in
red and its centroid marked) for a person to look at. With ``--probs`` it also writes
``probs/<stem>.png`` under the output folder: the probability map, 8-bit grey
(``round(255 * p)``), which ``python -m limijax.evaluate --pred_dir=OUT/probs`` (at any
``--threshold``) and ``python -m limijax.analyze --prob_dir=OUT/probs`` read. With
``--mask_dir`` (ground-truth masks named like the images, or NUAA-SIRST's
``<stem>_pixels0``) the overlay is instead
the paper's visual comparison (Fig. 5, :func:`comparison`): correct detections red,
missed targets blue, false alarms yellow, as Pd and Fa count them, and a zoomed inset
per target to the right of the image. Images are read as 8-bit grey, as
training reads them (16-bit frames stretched, see :mod:`limijax.image_io`), and
normalised with the statistics stored in the run. With ``--backend=onnx`` an exported
graph (``python -m limijax.export --out=FILE.onnx``) computes the masks in onnxruntime,
normalised as its metadata says (:mod:`limijax.onnx_model`); that path never imports JAX.

Process set-up: run as a command, it first adds an XLA flag and asks glibc for huge pages
(executing itself again once); :mod:`limijax.process` says which, why, and how to turn
each off.
"""

from __future__ import annotations

if __name__ == '__main__':  # a command: process set-up before JAX starts (limijax.process)
  from limijax import process as _process
  _process.set_up_command()

import collections
import os
import sys
from typing import Sequence

from absl import flags
import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from limijax import image_io
from limijax import metrics
from limijax.errors import UserError, run

IMAGE_SUFFIXES = ('.png', '.bmp', '.jpg', '.jpeg', '.tif', '.tiff')

FLAGS = flags.FLAGS

# The picture with ground truth (--mask_dir), coloured as the paper's Fig. 5.
HIT_COLOUR = (255, 0, 0)  # correct detection: red
MISS_COLOUR = (0, 0, 255)  # missed target: blue
FALSE_ALARM_COLOUR = (255, 255, 0)  # false alarm: yellow
# One inset per target: a crop of INSET_CROP x INSET_CROP px around it (larger for a
# larger target), scaled up by an integer factor, nearest neighbour, into a tile of
# INSET_TILE px, with an INSET_BORDER px frame in the target's colour; tiles lie in
# columns to the right of the image, INSET_GAP px apart, on PANEL_COLOUR.
INSET_CROP = 16
INSET_ZOOM = 4
INSET_TILE = INSET_CROP * INSET_ZOOM
INSET_BORDER = 2
INSET_GAP = 4
PANEL_COLOUR = (32, 32, 32)
# NUAA-SIRST names its masks after the image plus this suffix.
_NUAA_MASK_SUFFIX = '_pixels0'


def _define_flags() -> None:
  # Defined only when run as a program (see the end of this file), never on import.
  flags.DEFINE_string('workdir', None, 'A finished (or running) limijax run (--backend=jax).')
  flags.DEFINE_enum('backend', 'jax', ['jax', 'onnx'], 'jax: the run in --workdir; onnx: '
                    'an exported graph (--model) in onnxruntime, without JAX.')
  flags.DEFINE_string('model', None, 'The .onnx file of python -m limijax.export '
                      '(--backend=onnx).')
  flags.DEFINE_string('input', None, 'An image file or a folder of images.')
  flags.DEFINE_string('out', None, 'Output folder (created if absent).')
  flags.DEFINE_string('mask_dir', None, 'Optional folder of ground-truth masks with the '
                      'images\' stems (or <stem>_pixels0): the overlays then show correct '
                      'detections red, missed targets blue, false alarms yellow.')
  flags.DEFINE_bool('probs', False, 'Also write OUT/probs/<stem>.png: the probability map '
                    'as 8-bit grey, round(255 * p), for evaluate --pred_dir and analyze '
                    '--prob_dir.')


def list_inputs(path: str) -> list[str]:
  if os.path.isfile(path):
    return [path]
  if os.path.isdir(path):
    files = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith('.'))
    if not files:
      raise UserError(f'{path} holds no images ({", ".join(IMAGE_SUFFIXES)})')
    return files
  raise UserError(f'--input {path} does not exist')


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """RGB picture: the image, target outlines in red, a green dot at each centroid."""
  rgb = np.repeat(image[..., None], 3, axis=-1).astype(np.uint8)
  edge = mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3)))
  ring = ndimage.binary_dilation(mask, structure=np.ones((3, 3))) & ~mask
  rgb[ring | edge] = (255, 0, 0)
  labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
  for cy, cx in ndimage.center_of_mass(mask, labels, range(1, n + 1)):
    rgb[int(round(cy)), int(round(cx))] = (0, 255, 0)
  return rgb


def _outline(region: np.ndarray) -> np.ndarray:
  """The region's edge pixels and the 8-connected ring just outside it."""
  eight = np.ones((3, 3), dtype=bool)
  edge = region & ~ndimage.binary_erosion(region, structure=eight)
  ring = ndimage.binary_dilation(region, structure=eight) & ~region
  return edge | ring


def _inset(image: np.ndarray, regions, target: tuple[slice, slice]) -> np.ndarray:
  """One zoomed tile (INSET_TILE square, RGB) of the image around ``target`` (a bbox).

  ``regions`` are (bool mask, colour) pairs; in the tile each region's pixels are
  outlined from the inside, one zoomed pixel wide, so the grey values stay visible.
  """
  h, w = image.shape
  (r0, r1), (c0, c1) = ((s.start, s.stop) for s in target)
  side = max(INSET_CROP, r1 - r0 + 4, c1 - c0 + 4)
  zoom = max(1, INSET_TILE // side)
  side = INSET_TILE // zoom  # a crop that fills the tile as far as the zoom allows

  def window(lo, hi, size):  # side px centred on [lo, hi), kept inside [0, size)
    start = min(max(0, (lo + hi - side) // 2), max(0, size - side))
    return slice(start, min(size, start + side))

  rows, cols = window(r0, r1, h), window(c0, c1, w)
  up = lambda a: np.repeat(np.repeat(a[rows, cols], zoom, axis=0), zoom, axis=1)
  crop = up(image)
  tile = np.zeros((INSET_TILE, INSET_TILE, 3), np.uint8)
  tile[...] = PANEL_COLOUR
  view = tile[:crop.shape[0], :crop.shape[1]]
  view[...] = crop[..., None]
  for region, colour in regions:
    big = up(region)
    view[big & ~ndimage.binary_erosion(big, structure=np.ones((3, 3), bool))] = colour
  return tile


def comparison(image: np.ndarray, pred: np.ndarray, gt: np.ndarray,
               distance_threshold: float = 3.0) -> np.ndarray:
  """The paper's Fig. 5 for one image: RGB uint8, the image plus a panel of insets.

  Components are classified by the matching that Pd and Fa count
  (:func:`limijax.metrics.match_components`): a predicted component matched to a target
  is a correct detection (outlined red), a target without a match is missed (blue), a
  predicted component without a target is a false alarm (yellow). Outlines are drawn
  as in :func:`overlay` (edge plus the ring outside). The picture is the image, (H, W),
  at the top left; when there are targets, a panel to its right holds one inset per
  target in label (raster) order, top to bottom and then in further columns: the
  neighbourhood of the target zoomed INSET_ZOOM times, framed in the target's colour
  (red found, blue missed), with the same colours outlining the pixels inside.
  """
  image = np.asarray(image, np.uint8)
  m = metrics.match_components(pred, gt, distance_threshold)
  hit = np.isin(m.pred_labels, 1 + np.flatnonzero(m.pred_matched))
  false_alarm = (m.pred_labels > 0) & ~hit
  missed = np.isin(m.gt_labels, 1 + np.flatnonzero(m.gt_match < 0))
  # Later colours win where outlines touch: a correct detection is drawn last.
  regions = ((false_alarm, FALSE_ALARM_COLOUR), (missed, MISS_COLOUR), (hit, HIT_COLOUR))
  rgb = np.repeat(image[..., None], 3, axis=-1)
  for region, colour in regions:
    rgb[_outline(region)] = colour
  targets = ndimage.find_objects(m.gt_labels)
  if not targets:
    return rgb
  h, w = image.shape
  box = INSET_TILE + 2 * INSET_BORDER
  pitch = box + INSET_GAP
  per_column = max(1, (h - INSET_GAP) // pitch)
  columns = -(-len(targets) // per_column)
  height = max(h, INSET_GAP + min(len(targets), per_column) * pitch)
  picture = np.empty((height, w + INSET_GAP + columns * pitch, 3), np.uint8)
  picture[...] = PANEL_COLOUR
  picture[:h, :w] = rgb
  for k, target in enumerate(targets):
    top = INSET_GAP + (k % per_column) * pitch
    left = w + INSET_GAP + (k // per_column) * pitch
    picture[top:top + box, left:left + box] = HIT_COLOUR if m.gt_match[k] >= 0 else MISS_COLOUR
    picture[top + INSET_BORDER:top + INSET_BORDER + INSET_TILE,
            left + INSET_BORDER:left + INSET_BORDER + INSET_TILE] = _inset(image, regions, target)
  return picture


def find_masks(files: Sequence[str], mask_dir: str) -> list[str]:
  """The ground-truth mask of each image: ``<stem>.<ext>`` or NUAA's ``<stem>_pixels0``."""
  if not os.path.isdir(mask_dir):
    raise UserError(f'--mask_dir {mask_dir} is not a folder')
  by_stem: dict[str, list[str]] = {}
  for name in sorted(os.listdir(mask_dir)):
    stem, ext = os.path.splitext(name)
    if ext.lower() in IMAGE_SUFFIXES and not name.startswith('.'):
      by_stem.setdefault(stem, []).append(os.path.join(mask_dir, name))
  masks = []
  for path in files:
    stem = os.path.splitext(os.path.basename(path))[0]
    found = by_stem.get(stem, []) + by_stem.get(stem + _NUAA_MASK_SUFFIX, [])
    if not found:
      raise UserError(f'no mask for image {path} in {mask_dir} (expected {stem}.png or '
                      f'{stem}{_NUAA_MASK_SUFFIX}.png, or .bmp, ...)')
    if len(found) > 1:
      raise UserError(f'several masks for image {path}: {", ".join(found)}')
    masks.append(found[0])
  return masks


def probability_png(logits: np.ndarray) -> np.ndarray:
  """uint8 ``round(255 * sigmoid(logits))``: a probability map as an 8-bit grey image.

  Read back as ``value / 255 > 0.5`` it gives exactly the mask (``logits > 0``): a
  positive logit has p > 0.5, so 255 p > 127.5 rounds to 128 or more; p = 0.5 exactly
  (logit 0), which would round to 128, is written as 127."""
  logits = np.asarray(logits, np.float64)
  v = np.round(255.0 / (1.0 + np.exp(-logits)))
  return np.where(logits > 0, v, np.minimum(v, 127)).astype(np.uint8)


def predict_files(workdir: str | None, files: Sequence[str], out: str, progress: bool = True,
                  mask_dir: str | None = None, onnx_model: str | None = None,
                  probs: bool = False) -> list[str]:
  """Write ``<stem>.png`` and ``<stem>_overlay.png`` per image; with ``mask_dir`` the
  overlay is the :func:`comparison` with that image's ground truth; with ``probs`` also
  ``probs/<stem>.png`` (:func:`probability_png`). With ``onnx_model`` (an exported
  ``.onnx``) onnxruntime computes the masks and JAX is never imported."""
  masks = find_masks(files, mask_dir) if mask_dir else [None] * len(files)
  for path, mask_path in zip(files, masks):  # from the headers, before any prediction
    if mask_path is None:
      continue
    (iw, ih), (mw, mh) = image_io.image_size(path), image_io.image_size(mask_path, 'mask')
    if (iw, ih) != (mw, mh):
      line = image_io.mask_size_line(mask_path, (mh, mw), path, (ih, iw))
      if not image_io.mask_fits((mh, mw), (ih, iw)):
        raise UserError(line)
      print(f'warning: {line}', file=sys.stderr, flush=True)
  if onnx_model is not None:
    from limijax import onnx_model as onnx_lib  # pylint: disable=g-import-not-at-top
    logits_of = onnx_lib.OnnxModel(onnx_model).logits
  else:
    logits_of = _jax_logits(workdir, [image_io.image_size(p)[::-1] for p in files])
  os.makedirs(os.path.join(out, 'probs') if probs else out, exist_ok=True)
  written = []
  for path, mask_path in tqdm(list(zip(files, masks)), desc='predict', disable=not progress):
    image = image_io.read_image(path)
    logits = logits_of(image)
    mask = logits > 0
    stem = os.path.splitext(os.path.basename(path))[0]
    Image.fromarray((mask * 255).astype(np.uint8)).save(os.path.join(out, f'{stem}.png'))
    if probs:
      Image.fromarray(probability_png(logits)).save(os.path.join(out, 'probs', f'{stem}.png'))
    if mask_path is None:
      picture = overlay(image, mask)
    else:
      gt = image_io.read_mask_for(mask_path, path, image.shape).astype(bool)
      picture = comparison(image, mask, gt)
    Image.fromarray(picture).save(os.path.join(out, f'{stem}_overlay.png'))
    written.append(stem)
  return written


def _jax_logits(workdir: str, sizes: Sequence[tuple[int, int]] = ()):
  """image (H, W) uint8 -> float32 (H, W) logits of the run's best checkpoint.

  ``sizes``: the (H, W) of the images to come. Padded to multiples of 16, they are grouped
  into at most :data:`limijax.evaluation.EVAL_SHAPES` shapes as evaluation groups them
  (:func:`limijax.evaluation.shape_buckets`), so that the model compiles at most that many
  times; an image smaller than its group's shape is padded further and the model is told
  its own size (its logits equal those at its own size to float rounding). An image of a
  size not among ``sizes`` runs at its own padded size."""
  # Imported only here, after the checks on the inputs, so that a wrong --mask_dir fails
  # before JAX loads and the ONNX backend never loads it.
  from limijax import evaluation, input_pipeline  # pylint: disable=g-import-not-at-top
  from limijax.workdir import load_run  # pylint: disable=g-import-not-at-top
  trained = load_run(workdir)
  predict = evaluation.make_predict(trained.model)
  counts = collections.Counter(input_pipeline.padded_hw(h, w, 16) for h, w in sizes)
  plan, masked = evaluation.shape_plan(counts, evaluation.EVAL_SHAPES) if counts else ({}, set())

  def logits_of(image):
    x = input_pipeline.pad_to_multiple((image.astype(np.float32) - trained.mean) / trained.std,
                                       16)
    shape = plan.get(x.shape, x.shape)
    # one program per shape: with masks for every image of it, or for none
    logits = evaluation.predict_in_shape(predict, trained.params, trained.model_state,
                                    [x[None, :, :, None]], shape, shape in masked)
    return input_pipeline.crop_to_size(np.asarray(logits)[0, :, :, 0], image.shape)

  return logits_of


def main(argv):
  onnx = FLAGS.backend == 'onnx'
  for name in ('model' if onnx else 'workdir', 'input', 'out'):
    if not FLAGS[name].value:
      raise UserError(f'--{name} is required' + (' with --backend=onnx' if name == 'model'
                                                  else ''))
  if onnx and FLAGS.workdir:
    raise UserError('--backend=onnx reads --model, not --workdir')
  if not onnx and FLAGS.model:
    raise UserError('--model needs --backend=onnx')
  files = list_inputs(FLAGS.input)
  stems = predict_files(FLAGS.workdir, files, FLAGS.out, mask_dir=FLAGS.mask_dir,
                        onnx_model=FLAGS.model if onnx else None, probs=FLAGS.probs)
  extra = f' and probability maps (in {os.path.join(FLAGS.out, "probs")})' if FLAGS.probs else ''
  print(f'wrote {len(stems)} masks and overlays{extra} to {FLAGS.out}')


if __name__ == '__main__':
  _define_flags()
  run(main)
