"""Random-access sources over a dataset's splits, and the :class:`Dataset` holding them.

A source is what Grain reads: ``len(src)`` and ``src[i] -> {'image': uint8 (H, W),
'mask': uint8 (H, W) in {0, 1}, 'id': str}``. :class:`Source` reads a prepared TFDS copy
(see :mod:`limijax.tfds_builders`); :class:`FolderSource` reads the files themselves.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import threading
from typing import Any, Sequence

import numpy as np

from limijax import image_io
from limijax import tfds_builders


class Source:
  """Random access to a split of a prepared dataset.

  ``src[i]`` is ``{'image': uint8 (H, W), 'mask': uint8 (H, W) in {0, 1}, 'id': str}``.
  Pickles without its open file handles (Grain sends sources to worker processes),
  which each process reopens on first access.
  """

  def __init__(self, prepared_dir: str, indices: Sequence[int], ids: Sequence[str]):
    self.prepared_dir = prepared_dir
    self.indices = np.asarray(indices, dtype=np.int64)
    self.ids = tuple(ids)
    self._data = None
    self._lock = threading.Lock()  # Grain reads from several threads

  def _source(self):
    with self._lock:
      if self._data is None:
        self._data = tfds_builders.open_source(self.prepared_dir)
      return self._data

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    del state['_data'], state['_lock']
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state, _data=None, _lock=threading.Lock())

  def __len__(self) -> int:
    return len(self.indices)

  def _record(self, i: int) -> int:
    i = operator.index(i)
    if not -len(self) <= i < len(self):
      raise IndexError(f'index {i} out of range for a split of {len(self)} images')
    return int(self.indices[i])

  def __getitem__(self, i: int) -> dict[str, Any]:
    return tfds_builders.decode(self._source()[self._record(i)])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    records = self._source().__getitems__([self._record(i) for i in indices])
    return [tfds_builders.decode(r) for r in records]

  def __repr__(self) -> str:
    return f'Source({len(self)} images from {self.prepared_dir})'


class FolderSource:
  """The same interface as :class:`Source`, read straight from the files (no preparing)."""

  def __init__(self, root: str, items: Sequence[tuple[str, str, str]]):
    self.root = root
    self.items = tuple(tuple(i) for i in items)  # (id, image rel, mask rel)
    self.ids = tuple(i[0] for i in self.items)

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, i: int) -> dict[str, Any]:
    id_, image_rel, mask_rel = self.items[operator.index(i)]
    image_path = os.path.join(self.root, image_rel)
    image = image_io.read_image(image_path)
    mask = image_io.read_mask_for(os.path.join(self.root, mask_rel), image_path, image.shape)
    return {'image': image, 'mask': mask, 'id': id_}

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [self[i] for i in indices]

  def __repr__(self) -> str:
    return f'FolderSource({len(self)} images from {self.root})'


@dataclasses.dataclass
class Dataset:
  """A dataset split three ways, with the training split's normalisation."""

  name: str
  layout: str
  train: Source | FolderSource
  val: Source | FolderSource
  test: Source | FolderSource
  mean: float  # 0..255 scale, from train
  std: float
  root: str = ''
  split: str = ''
  prepared_dir: str = ''  # '' when read straight from the folder
