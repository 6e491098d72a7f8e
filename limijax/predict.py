"""Predict target masks with a trained run.

    python -m limijax.predict --workdir=DIR --input=IMAGE_OR_FOLDER --out=FOLDER

For each input image writes ``<stem>.png`` (the binary mask, 0/255, at the image's own
size) and ``<stem>_overlay.png`` (the grey image with every detected target outlined in
red and its centroid marked) for a person to look at. Images are read as 8-bit grey and
normalised with the statistics stored in the run.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import flags
import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from limijax.errors import UserError, run

IMAGE_SUFFIXES = ('.png', '.bmp', '.jpg', '.jpeg', '.tif', '.tiff')

_WORKDIR = flags.DEFINE_string('workdir', None, 'A finished (or running) limijax run.')
_INPUT = flags.DEFINE_string('input', None, 'An image file or a folder of images.')
_OUT = flags.DEFINE_string('out', None, 'Output folder (created if absent).')


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


def read_grey(path: str) -> np.ndarray:
  try:
    with Image.open(path) as im:
      im.load()
      return np.asarray(im.convert('L'), np.uint8)
  except (OSError, ValueError) as e:
    raise UserError(f'cannot read image {path}: {e}') from None


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


def predict_files(workdir: str, files: Sequence[str], out: str, progress: bool = True) -> list[str]:
  from limijax import input_pipeline, train  # pylint: disable=g-import-not-at-top
  trained = train.load_run(workdir)
  predict = train.make_predict(trained.model)
  os.makedirs(out, exist_ok=True)
  written = []
  for path in tqdm(files, desc='predict', disable=not progress):
    image = read_grey(path)
    x = (image.astype(np.float32) - trained.mean) / trained.std
    padded = input_pipeline.pad_to_multiple(x, 16)
    logits = np.asarray(predict(trained.params, trained.model_state, padded[None, :, :, None]))
    mask = input_pipeline.crop_to_size(logits[0, :, :, 0], image.shape) > 0
    stem = os.path.splitext(os.path.basename(path))[0]
    Image.fromarray((mask * 255).astype(np.uint8)).save(os.path.join(out, f'{stem}.png'))
    Image.fromarray(overlay(image, mask)).save(os.path.join(out, f'{stem}_overlay.png'))
    written.append(stem)
  return written


def main(argv):
  if len(argv) > 1:
    raise UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  for flag, name in ((_WORKDIR, 'workdir'), (_INPUT, 'input'), (_OUT, 'out')):
    if not flag.value:
      raise UserError(f'--{name} is required')
  files = list_inputs(_INPUT.value)
  stems = predict_files(_WORKDIR.value, files, _OUT.value)
  print(f'wrote {len(stems)} masks and overlays to {_OUT.value}')


if __name__ == '__main__':
  run(main)
