"""TFDS builders that turn a dataset folder on disk into prepared ``array_record`` data.

The public IRSTD datasets cannot be downloaded by a script: users bring a folder (see
:mod:`limijax.data` for the layouts it understands). Each builder here reads such a
folder as its *manual dir* and writes one TFDS split, ``full``, holding every example
the chosen split needs, in the order of their sorted ids (shuffling is disabled, so
example ``i`` of ``full`` is the ``i``-th id of :func:`read_meta`'s ``ids``). The
train / validation / test split is a list of indices into ``full``, made by
:mod:`limijax.data`; that way one prepared copy serves every ``split_seed`` and
``val_fraction``.

Features of an example:

* ``image``: ``Image(shape=(None, None, 1))``, 8-bit grey as :mod:`limijax.image_io` reads
  it (colour converted, 16-bit frames stretched).
* ``mask``: ``Image(shape=(None, None, 1))`` holding **0/1** (not 0/255): the label the
  loss reads, already binarised, so readers never threshold again.
* ``id``: ``Text``, the file stem without the NUAA ``_pixels0`` suffix.

Where it goes and when it is rebuilt: ``<data_dir>/<builder>/<config>/<version>/``, where
``<config>`` is a fingerprint of the folder's absolute path and of the name, size and
modification time of every file the split uses (images, masks, split files). A folder
that moved, gained a file or had one edited gets a new fingerprint and is prepared
again; an unchanged folder is read from the prepared copy without touching its images.
Old copies are not deleted: removing ``<data_dir>/<builder>/`` is always safe.

Beside the TFDS files, ``limijax_meta.json`` records the folder, its layout, the ids in
order, the standard split, each image's mean, std and size (0..255 scale), from which
:mod:`limijax.data` computes the normalisation of any training split without reading an
image, and how many masks hold values other than 0 and 255 (``non_binary_masks``, warned
about on every load). It is written last, so it also marks the copy as complete.

TensorFlow is not needed: preparation runs ``download_and_prepare(...,
file_format='array_record')`` and reading goes through ``builder_from_directory(...)
.as_data_source(...)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from typing import Any, Iterator, Sequence

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
from tqdm import tqdm

# limijax.data imports this module, so this module imports nothing of limijax.data.
from limijax import image_io

SPLIT = 'full'  # TFDS reserves 'all'
META_FILE = 'limijax_meta.json'
META_FORMAT = 2  # bump when the meta file's content changes meaning (2: non_binary_masks)

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the dataset yourself (it cannot be fetched by a script) and unpack it into one
folder. Any of these layouts is recognised:

  BasicIRSTD:     images/  masks/  img_idx/train_<NAME>.txt  img_idx/test_<NAME>.txt
  DNA-Net:        images/  masks/  50_50/train.txt  50_50/test.txt  (or another ratio)
  IRSTD-1k:       IRSTD1k_Img/  IRSTD1k_Label/  trainval.txt  test.txt
  MSHNet-style:   images/  masks/  trainval.txt  test.txt
  NUAA SIRST:     images/Misc_N.png  masks/Misc_N_pixels0.png  idx_427/trainval.txt  test.txt
  plain folder:   images/  masks/  (random split only)

Pass that folder as data.root (or --root); `python -m limijax.data --root=DIR` shows
what is found there before training.
"""


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """One prepared copy of one folder; ``name`` is the folder's fingerprint.

  ``items`` holds ``(id, image path, mask path)`` with paths relative to the manual
  dir. It is kept out of ``repr`` because TFDS logs the config, and a dataset has
  thousands of items.
  """

  items: tuple[tuple[str, str, str], ...] = dataclasses.field(default=(), repr=False)


class _FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Reads ``config.items`` from the manual dir; subclasses only name the dataset."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Grey image, 0/1 mask and id for every example.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  DESCRIPTION = 'Infrared small target detection images and binary target masks.'

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 1)),
            'mask': tfds.features.Image(shape=(None, None, 1)),
            'id': tfds.features.Text(),
        }),
        # Keep the generation order (sorted ids) so indices can be computed from the
        # id list in the meta file instead of by decoding every example.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    return {SPLIT: self._generate_examples(os.fspath(dl_manager.manual_dir))}

  def _generate_examples(self, root: str) -> Iterator[tuple[str, dict[str, Any]]]:
    items = self.builder_config.items
    for id_, image_rel, mask_rel in tqdm(items, desc=f'preparing {self.name}', unit='img',
                                         leave=False, disable=None):  # None: on a terminal
      image_path = os.path.join(root, image_rel)
      image = image_io.read_image(image_path)
      mask = image_io.read_mask_for(os.path.join(root, mask_rel), image_path, image.shape)
      # Image features cannot encode numpy arrays without TensorFlow: hand them PIL
      # images, already single-channel so the stored PNG matches the declared shape.
      yield id_, {
          'image': Image.fromarray(image),
          'mask': Image.fromarray(mask),
          'id': id_,
      }


class NudtSirst(_FolderBuilder):
  """NUDT-SIRST (1327 images, 256x256)."""

  name = 'nudt_sirst'
  DESCRIPTION = 'NUDT-SIRST infrared small target images and masks.'


class Irstd1k(_FolderBuilder):
  """IRSTD-1k (1001 images, 512x512)."""

  name = 'irstd1k'
  DESCRIPTION = 'IRSTD-1k infrared small target images and masks.'


class NuaaSirst(_FolderBuilder):
  """NUAA SIRST (427 images of various sizes)."""

  name = 'nuaa_sirst'
  DESCRIPTION = 'NUAA SIRST infrared small target images and masks.'


class SyntheticIrstd(_FolderBuilder):
  """Images written by :mod:`limijax.synthetic`."""

  name = 'synthetic_irstd'
  DESCRIPTION = 'Synthetic infrared small target images and masks.'


class IrstdFolder(_FolderBuilder):
  """Any other folder of images and masks."""

  name = 'irstd_folder'
  DESCRIPTION = 'Infrared small target images and masks from a user folder.'


# data.name -> builder class
BUILDERS = {
    'nudt': NudtSirst,
    'irstd1k': Irstd1k,
    'nuaa': NuaaSirst,
    'synthetic': SyntheticIrstd,
    'folder': IrstdFolder,
}


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
  """An exclusive lock on ``path``, so that runs started side by side prepare once."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:  # no fcntl (Windows): concurrent preparation is then unguarded
    yield
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepared_dir(data_dir: str, name: str, config_name: str) -> str:
  """Where ``prepare`` puts (or put) this folder's copy."""
  cls = BUILDERS[name]
  return os.path.join(data_dir, cls.name, config_name, str(cls.VERSION))


def read_meta(path: str) -> dict[str, Any] | None:
  """The meta file of a complete prepared copy, or None when there is none."""
  try:
    with open(os.path.join(path, META_FILE)) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  return meta if meta.get('format') == META_FORMAT else None


def prepare(*, name: str, root: str, config_name: str,
            items: Sequence[tuple[str, str, str]], meta: dict[str, Any],
            data_dir: str) -> str:
  """Prepares ``items`` of folder ``root`` once and returns the prepared directory.

  ``meta`` is written beside the TFDS files after they are complete (``format`` is
  added). When a complete copy already exists it is returned untouched.
  """
  out = prepared_dir(data_dir, name, config_name)
  with file_lock(os.path.join(os.path.dirname(out), '.lock')):
    if read_meta(out) is not None:  # another process finished it while we waited
      return out
    builder = BUILDERS[name](
        data_dir=data_dir,
        config=FolderConfig(name=config_name, description=f'Prepared from {root}',
                            items=tuple(tuple(i) for i in items)))
    # TFDS's own bars and its closing print would interleave with ours: one bar (in
    # _generate_examples) and one log line instead.
    tfds.display_progress_bar(False)
    try:
      with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=root),
            file_format='array_record')
    finally:
      tfds.display_progress_bar(True)
    logging.info('prepared %d images of %s once, as TFDS data in %s (later runs read it)',
                 len(items), root, out)
    meta = dict(meta, format=META_FORMAT)
    tmp = os.path.join(out, META_FILE + f'.tmp{os.getpid()}')
    with open(tmp, 'w') as f:
      json.dump(meta, f)
    os.replace(tmp, os.path.join(out, META_FILE))
  return out


def open_source(path: str):
  """Random-access view (``len``, ``[i]``, ``__getitems__``) of a prepared copy."""
  return tfds.builder_from_directory(path).as_data_source(SPLIT)


def decode(record: dict[str, Any]) -> dict[str, Any]:
  """A record of :func:`open_source` as ``{'image', 'mask', 'id'}`` (2-D uint8, str)."""
  id_ = record['id']
  if isinstance(id_, bytes):
    id_ = id_.decode('utf-8')
  return {
      'image': np.asarray(record['image'], np.uint8)[..., 0],
      'mask': np.asarray(record['mask'], np.uint8)[..., 0],
      'id': str(id_),
  }
