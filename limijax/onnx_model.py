"""Run an exported ONNX graph of Limi-Net in onnxruntime, without JAX.

:func:`limijax.export.write_onnx` writes the twin's inference graph: input ``image``,
float32 NCHW ``(N, 1, H, W)`` with H and W multiples of 16, output ``logits``
``(N, 1, H, W)``; batch, height and width are dynamic. The file's ``metadata_props``
say how the input is scaled:

* ``limijax.normalisation`` - JSON ``{"mean": ..., "std": ...}`` of the training split
  (0..255 grey);
* ``limijax.normalisation_in_graph`` - ``true`` when ``(x - mean) / std`` is part of the
  graph (``export --with_normalisation``), so that raw 0..255 grey is the input;
  ``false`` when the input is the normalised image;
* ``limijax.config`` - JSON of the model config (and ``in_channels``).

:class:`OnnxModel` reads them and segments a grey image at its own size as evaluation
and ``predict`` do: normalise, pad at the bottom and right to a multiple of 16 with the
mean grey (0 after normalisation), run, crop back, threshold logits at 0.
"""

from __future__ import annotations

import json
import os

import numpy as np

from limijax.architecture import STRIDE
from limijax.errors import UserError

INPUT_NAME, OUTPUT_NAME = 'image', 'logits'
META_CONFIG = 'limijax.config'
META_NORMALISATION = 'limijax.normalisation'
META_IN_GRAPH = 'limijax.normalisation_in_graph'


def pad_to_multiple(image: np.ndarray, multiple: int, value: float) -> np.ndarray:
  """Pad (H, W) at the bottom and right to multiples of ``multiple`` with ``value``."""
  h, w = image.shape
  ph, pw = -h % multiple, -w % multiple
  if ph == 0 and pw == 0:
    return image
  return np.pad(image, ((0, ph), (0, pw)), constant_values=value)


class OnnxModel:
  """An exported Limi-Net graph in an onnxruntime CPU session."""

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise UserError(f'--model {path}: no such file')
    try:
      import onnxruntime as ort  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError('the ONNX backend needs onnxruntime: pip install onnxruntime '
                      '(or limijax[torch])') from None
    try:
      self.session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    except Exception as e:  # pylint: disable=broad-except  # ORT raises its own types
      raise UserError(f'{path}: cannot load the ONNX graph ({" ".join(str(e).split())[:300]})'
                      ) from None
    self.path = path
    meta = dict(self.session.get_modelmeta().custom_metadata_map)
    if META_NORMALISATION not in meta or META_IN_GRAPH not in meta:
      raise UserError(f'{path} holds no limijax normalisation metadata '
                      f'({META_NORMALISATION}); write it with python -m limijax.export')
    try:
      norm = json.loads(meta[META_NORMALISATION])
      self.mean, self.std = float(norm['mean']), float(norm['std'])
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f'{path}: unreadable {META_NORMALISATION} metadata ({e})') from None
    self.in_graph = meta[META_IN_GRAPH].strip().lower() == 'true'
    self.config = json.loads(meta[META_CONFIG]) if META_CONFIG in meta else None
    self.input_name = self.session.get_inputs()[0].name

  def prepare(self, image: np.ndarray) -> np.ndarray:
    """The graph's (1, 1, Hp, Wp) float32 input for an (H, W) 0..255 grey image."""
    x = np.asarray(image, np.float32)
    if self.in_graph:  # raw grey; the padding is the mean grey, 0 once normalised
      x = pad_to_multiple(x, STRIDE, np.float32(self.mean))
    else:
      x = pad_to_multiple((x - np.float32(self.mean)) / np.float32(self.std), STRIDE, 0.0)
    return x[None, None]

  def run(self, batch: np.ndarray) -> np.ndarray:
    """Logits (N, 1, H, W) of a prepared float32 (N, 1, H, W) batch."""
    return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]

  def logits(self, image: np.ndarray) -> np.ndarray:
    """(H, W) logits of an (H, W) grey image at its own size."""
    h, w = np.shape(image)
    return self.run(self.prepare(image))[0, 0, :h, :w]

  def segment(self, image: np.ndarray) -> np.ndarray:
    """The (H, W) bool mask: logit > 0."""
    return self.logits(image) > 0
