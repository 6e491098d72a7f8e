r"""Score a trained run, or any model's saved predictions, with the field's metrics.

Evaluate the best checkpoint of a run on its test (or validation) split::

  python -m limijax.evaluate --workdir=DIR [--split=test|val]

Score saved predictions against ground-truth masks::

  python -m limijax.evaluate --pred_dir=P --mask_dir=M [--threshold=0.5]

In the second form every mask in ``M`` (``.png`` or ``.bmp``) needs a prediction
``P/<same stem>.png``. Prediction grey values 0..255 are read as probabilities
``value / 255`` and a pixel is a target when that is ``> threshold``; colour PNGs are
converted to grey first; a 16-bit prediction is refused. Masks are read by
:mod:`limijax.image_io`: binarised at ``> 127``, a 0/1 label image kept as it is, and one
warning line counts the masks holding values other than 0 and 255. For NUAA-SIRST, whose
masks are named ``Misc_N_pixels0``, a prediction named after the image (``Misc_N.png``)
is accepted too. Predictions must have the mask's size: metrics are computed at the
original resolution, never after a resize.

Both forms print the metrics (see :mod:`limijax.metrics`) as one JSON object on the last
line of stdout; a progress bar and notes go to stderr.

Process set-up: run as a command, it first adds an XLA flag and asks glibc for huge pages
(executing itself again once); :mod:`limijax.process` says which, why, and how to turn
each off.
"""

from __future__ import annotations

if __name__ == '__main__':  # a command: process set-up before JAX starts (limijax.process)
  from limijax import process as _process
  _process.set_up_command()

import json
import os
import sys
from typing import Sequence

from absl import app
from absl import flags
import numpy as np
import tqdm

from limijax import image_io
from limijax import metrics
from limijax.errors import UserError
from limijax.errors import cli_main

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program (see the end of this file): library code that
  # imports this module must not gain these flags, some of whose names other commands use.
  flags.DEFINE_string('workdir', None, 'Run folder whose best checkpoint to score.')
  flags.DEFINE_enum('split', 'test', ['test', 'val'], 'Split to score (--workdir).')
  flags.DEFINE_string(
      'pred_dir', None, 'Folder of predicted probability PNGs, same stems as the masks.')
  flags.DEFINE_string('mask_dir', None, 'Folder of ground-truth masks (.png/.bmp).')
  flags.DEFINE_float(
      'threshold', 0.5, 'A prediction pixel is a target when value/255 > threshold.')

_MASK_SUFFIXES = ('.png', '.bmp')
_PRED_SUFFIX = '.png'
# NUAA-SIRST names its masks after the image plus this suffix.
_NUAA_MASK_SUFFIX = '_pixels0'


def list_files(folder: str, suffixes: Sequence[str], what: str) -> dict[str, str]:
  """Map stem -> path for the files of ``folder`` with one of ``suffixes``."""
  if not os.path.isdir(folder):
    raise UserError(f'{what} folder not found: {folder}')
  found: dict[str, str] = {}
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    path = os.path.join(folder, name)
    if ext.lower() not in suffixes or not os.path.isfile(path):
      continue
    if stem in found:
      raise UserError(f'two {what} files share the stem {stem!r}: {found[stem]} and {path}')
    found[stem] = path
  return found


def pair_files(pred_dir: str, mask_dir: str) -> list[tuple[str, str]]:
  """(prediction, mask) paths for every mask, checked before any pixel is scored."""
  masks = list_files(mask_dir, _MASK_SUFFIXES, 'mask')
  if not masks:
    raise UserError(f'no .png or .bmp masks in {mask_dir}')
  preds = list_files(pred_dir, (_PRED_SUFFIX,), 'prediction')
  pairs, missing = [], []
  for stem, mask_path in masks.items():
    pred_path = preds.get(stem)
    if pred_path is None and stem.endswith(_NUAA_MASK_SUFFIX):
      pred_path = preds.get(stem[:-len(_NUAA_MASK_SUFFIX)])
    if pred_path is None:
      missing.append(mask_path)
    else:
      pairs.append((pred_path, mask_path))
  if missing:
    expected = os.path.join(pred_dir, os.path.splitext(os.path.basename(missing[0]))[0])
    raise UserError(f'no prediction for mask {missing[0]} (expected {expected}.png); '
                    f'{len(missing)} of {len(masks)} masks lack one')
  used = {p for p, _ in pairs}
  unused = len(preds) - len(used)
  if unused:
    print(f'note: {unused} prediction(s) in {pred_dir} have no mask and are ignored',
          file=sys.stderr)
  # Sizes come from the headers, so a mismatch stops the run before the scoring starts.
  for pred_path, mask_path in pairs:
    pred_size = image_io.image_size(pred_path, 'prediction', stretch_16bit=False)
    mask_size = image_io.image_size(mask_path, 'mask')
    if pred_size != mask_size:
      raise UserError(
          f'size mismatch: prediction {pred_path} is {pred_size[0]}x{pred_size[1]} '
          f'but mask {mask_path} is {mask_size[0]}x{mask_size[1]} (width x height); '
          'score at the original size, do not resize')
  return pairs


def evaluate_folders(pred_dir: str, mask_dir: str, threshold: float = 0.5,
                     progress: bool = True) -> dict:
  """METRICS of the probability PNGs in ``pred_dir`` against the masks in ``mask_dir``."""
  if not 0.0 <= threshold <= 1.0:
    raise UserError(f'--threshold must lie in [0, 1], got {threshold}')
  pairs = pair_files(pred_dir, mask_dir)
  acc = metrics.MetricAccumulator()
  non_binary = 0  # masks holding values other than 0 and 255: one warning at the end
  with tqdm.tqdm(pairs, desc='scoring', unit='img', file=sys.stderr,
                 disable=not progress) as bar:
    for pred_path, mask_path in bar:
      pred = image_io.read_image(pred_path, 'prediction', stretch_16bit=False)
      prob = pred.astype(np.float64) / 255.0
      mask, odd = image_io.read_mask_info(mask_path)
      gt = mask.astype(bool)
      non_binary += odd
      if prob.shape != gt.shape:  # header said otherwise; the decoder is the authority
        raise UserError(f'size mismatch: prediction {pred_path} {prob.shape} '
                        f'vs mask {mask_path} {gt.shape}')
      acc.update(metrics.binarize_probabilities(prob, threshold), gt)
  if non_binary:
    print(f'warning: {image_io.non_binary_mask_warning(non_binary, len(pairs))}',
          file=sys.stderr, flush=True)
  return acc.result()


def _print_metrics(result: dict) -> None:
  print(f"{metrics.format_metrics(result)}  ({result['num_images']} images, "
        f"{result['num_targets']} targets)")
  print(json.dumps(result), flush=True)  # last stdout line: what scripts parse


def main(argv: Sequence[str]) -> None:
  workdir, pred_dir, mask_dir = FLAGS.workdir, FLAGS.pred_dir, FLAGS.mask_dir
  folders_mode = pred_dir is not None or mask_dir is not None
  if workdir is not None and folders_mode:
    raise UserError('give either --workdir or --pred_dir/--mask_dir, not both')
  if workdir is not None:
    if not os.path.isdir(workdir):
      raise UserError(f'workdir not found: {workdir}')
    # Imported here so that scoring saved predictions never loads JAX or the model.
    from limijax import evaluation  # pylint: disable=g-import-not-at-top
    result = evaluation.evaluate_workdir(workdir, FLAGS.split)
  elif folders_mode:
    if pred_dir is None or mask_dir is None:
      raise UserError('--pred_dir and --mask_dir must be given together')
    result = evaluate_folders(pred_dir, mask_dir, FLAGS.threshold)
  else:
    raise UserError('nothing to evaluate: give --workdir=DIR, or --pred_dir=P and '
                    '--mask_dir=M')
  _print_metrics(result)


if __name__ == '__main__':
  _define_flags()
  app.run(cli_main(main))
