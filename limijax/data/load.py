"""The dataset a config names: checked, prepared once as TFDS data, split and normalised.

:func:`load_dataset` is what training and evaluation call. The first time a folder is
used it is read once (every image and mask, through :mod:`limijax.image_io`) and written
as TFDS ``array_record`` data by :mod:`limijax.tfds_builders`, which also says where the
copy goes and when it is rebuilt; later calls read that copy without touching the
folder's images. :func:`folder_dataset` reads a folder straight from its files instead
(the ``--preview`` of ``python -m limijax.data``).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import pathlib
import re
import shutil
from typing import Any

from absl import logging
import numpy as np
from PIL import Image
from tqdm import tqdm

from limijax import image_io
from limijax import tfds_builders
from limijax.data import layouts
from limijax.data import plan as plan_lib
from limijax.data import splits as splits_lib
from limijax.data.sources import Dataset, FolderSource, Source
from limijax.errors import UserError

NAMES = ('synthetic', 'nudt', 'irstd1k', 'nuaa', 'folder')  # the values data.name accepts
DEFAULT_DATA_DIR = os.path.join('~', '.cache', 'limijax', 'tfds')
# How the no-dataset line names each dataset.
_DISPLAY_NAMES = {'nudt': 'NUDT-SIRST', 'irstd1k': 'IRSTD-1k', 'nuaa': 'NUAA-SIRST'}


def _get(cfg: Any, key: str, default: Any) -> Any:
  if isinstance(cfg, dict) or hasattr(cfg, 'get'):
    value = cfg.get(key, default)
  else:
    value = getattr(cfg, key, default)
  return default if value is None else value


def _fraction(cfg: Any, key: str, default: float) -> float:
  value = float(_get(cfg, key, default))
  if not 0.0 <= value < 1.0:
    raise UserError(f'data.{key}: {value} is not in [0, 1)')
  return value


def no_dataset_error(root: str, name: str, inner: list[str] | None = None) -> UserError:
  """The one line for a data.root that does not exist, is empty or is not a dataset."""
  where = root if os.path.isabs(root) else f'{root} ({os.path.abspath(root)})'
  if inner:
    where += f', which holds dataset folders ({", ".join(inner)}): point data.root at one'
  if name in _DISPLAY_NAMES:
    basic = layouts.BASIC_NAMES[name]
    what = (f'put {_DISPLAY_NAMES[name]} there (images/, masks/, img_idx/train_{basic}.txt, '
            f'img_idx/test_{basic}.txt, as the BasicIRSTD toolbox keeps it; the README lists '
            f'the other layouts)')
  else:
    what = 'put a dataset folder there (images/ and masks/, one mask per image stem)'
  return UserError(f'no dataset at {where}: {what} or set --config.data.root=DIR')


def _fingerprint(plan: plan_lib.Plan) -> str:
  """Names a prepared copy: changes when the folder moves or a used file changes."""
  rels = sorted(set(plan.layout.split_files.values()) if plan.split == 'standard' else set())
  rels += sorted(r for pair in plan.items.values() for r in pair)
  files = []
  for rel in rels:
    st = os.stat(plan.path(rel))
    files.append((rel, st.st_size, st.st_mtime_ns))
  payload = json.dumps({'root': os.path.abspath(plan.layout.root), 'layout': plan.layout.kind,
                        'items': sorted(plan.items.items()), 'files': files})
  digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
  slug = re.sub(r'[^a-z0-9]+', '_', os.path.basename(os.path.abspath(plan.layout.root)).lower())
  return f'{slug.strip("_")[:32] or "data"}_{digest}'


def _write_synthetic_range(tmp: str, start: int, stop: int, size: int, seed: int) -> int:
  from limijax import synthetic  # pylint: disable=g-import-not-at-top
  for index in range(start, stop):
    id_, image, mask = synthetic.scene(index, size, seed)
    image = np.asarray(image, dtype=np.uint8)
    mask = (np.asarray(mask) > 0).astype(np.uint8) * 255  # viewable 0/255 on disk
    Image.fromarray(image).save(os.path.join(tmp, 'images', f'{id_}.png'))
    Image.fromarray(mask).save(os.path.join(tmp, 'masks', f'{id_}.png'))
  return stop - start


def _write_synthetic(tmp: str, n: int, size: int, seed: int) -> None:
  """The n scenes as PNG files, in worker processes when there are many (each image is
  drawn from its own random stream, so the files do not depend on who writes them)."""
  workers = min(os.cpu_count() or 1, 16, max(1, n // 64))
  chunk = 32
  ranges = [(i, min(i + chunk, n)) for i in range(0, n, chunk)]
  bar = tqdm(total=n, desc='generating synthetic images', leave=False)
  if workers == 1:
    for a, b in ranges:
      bar.update(_write_synthetic_range(tmp, a, b, size, seed))
  else:
    ctx = multiprocessing.get_context('spawn')  # JAX may already run threads: no fork
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      futures = [pool.submit(_write_synthetic_range, tmp, a, b, size, seed) for a, b in ranges]
      for f in concurrent.futures.as_completed(futures):
        bar.update(f.result())
  bar.close()


def _synthetic_root(data_cfg: Any, data_dir: str) -> str:
  """Writes the synthetic images once as a plain folder (layout ``folder``)."""
  from limijax import synthetic  # pylint: disable=g-import-not-at-top
  n = int(_get(data_cfg, 'num_images', 600))
  size = int(_get(data_cfg, 'synthetic_size', 128))
  seed = int(_get(data_cfg, 'split_seed', 0))
  if n < 3:  # fewer cannot fill train, val and test
    raise UserError(f'data.num_images: {n} is too few; at least 3 are needed')
  # A changed generator must not reuse images written by the old one.
  source = getattr(synthetic, '__file__', None)
  code = pathlib.Path(source).read_bytes() if source and os.path.isfile(source) else b''
  tag = hashlib.sha256(code).hexdigest()[:8]
  root = os.path.join(data_dir, 'synthetic_png', f'n{n}_s{size}_seed{seed}_{tag}')
  done = os.path.join(root, '.complete')
  if os.path.isfile(done):
    return root
  with tfds_builders.file_lock(root + '.lock'):
    if os.path.isfile(done):
      return root
    tmp = f'{root}.tmp{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, 'images'))
    os.makedirs(os.path.join(tmp, 'masks'))
    try:
      _write_synthetic(tmp, n, size, seed)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    open(os.path.join(tmp, '.complete'), 'w').close()
    shutil.rmtree(root, ignore_errors=True)  # a half-written copy from a killed run
    os.rename(tmp, root)
  return root


def load_dataset(data_cfg: Any) -> Dataset:
  """The dataset ``config.data`` names, prepared once as TFDS data and split.

  Raises UserError (one line naming the file, split or key) when the folder cannot be
  used for training. Logs one warning when masks hold values other than 0 and 255.
  A large synthetic set is drawn in worker processes started with ``spawn``, which
  import the calling script again: call this from a script only under
  ``if __name__ == '__main__':`` (the commands and notebooks need nothing).
  """
  name = str(_get(data_cfg, 'name', 'synthetic'))
  if name not in NAMES:
    raise UserError(f'data.name: unknown dataset {name!r}; expected one of {", ".join(NAMES)}')
  data_dir = os.path.abspath(os.path.expanduser(str(_get(data_cfg, 'data_dir', '')) or
                                                DEFAULT_DATA_DIR))
  try:
    os.makedirs(data_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f'data.data_dir: cannot create {data_dir} ({e.strerror})') from None
  if not os.access(data_dir, os.W_OK):
    raise UserError(f'data.data_dir: {data_dir} is not writable')
  split_seed = int(_get(data_cfg, 'split_seed', 0))
  test_fraction = _fraction(data_cfg, 'test_fraction', 0.2)
  val_fraction = _fraction(data_cfg, 'val_fraction', 0.2)
  if name == 'synthetic':
    root, split = _synthetic_root(data_cfg, data_dir), 'random'
  else:
    root = str(_get(data_cfg, 'root', ''))
    if not root:
      raise UserError(f'data.root: not set; name the folder that holds the {name} dataset')
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
      raise no_dataset_error(root, name)
    split = str(_get(data_cfg, 'split', 'standard'))
    if split not in splits_lib.SPLITS:
      raise UserError(f'data.split: unknown split {split!r}; expected one of '
                      f'{", ".join(splits_lib.SPLITS)}')

  plan = plan_lib.make_plan(root, name, split, str(_get(data_cfg, 'split_dir', '')))
  if plan.layout.kind is None:  # an empty folder, or one that holds no dataset
    raise no_dataset_error(root, name, plan.layout.inner)
  if plan.problems:
    raise plan_lib.as_error(plan.problems, root)

  config_name = _fingerprint(plan)
  out = tfds_builders.prepared_dir(data_dir, name, config_name)
  meta = tfds_builders.read_meta(out)
  if meta is None:
    infos = plan_lib.check_files(plan)
    if plan.problems:
      raise plan_lib.as_error(plan.problems, root)
    ids = sorted(plan.items)
    meta = {
        'root': os.path.abspath(root), 'layout': plan.layout.kind,
        'split_files': plan.layout.split_files, 'standard': plan.standard, 'ids': ids,
        'mean': [infos[i].mean for i in ids], 'std': [infos[i].std for i in ids],
        'height': [infos[i].height for i in ids], 'width': [infos[i].width for i in ids],
        'non_binary_masks': plan.non_binary_masks, 'resized_masks': plan.resized_masks,
    }
    items = [(i, *plan.items[i]) for i in ids]
    out = tfds_builders.prepare(name=name, root=os.path.abspath(root), config_name=config_name,
                                items=items, meta=meta, data_dir=data_dir)
    meta = tfds_builders.read_meta(out) or meta
  for line in meta.get('resized_masks', ()):  # every time the data is loaded, not only once
    logging.warning('%s', line)
  if meta.get('non_binary_masks'):
    logging.warning('%s: %s', root,
                    image_io.non_binary_mask_warning(meta['non_binary_masks'], len(meta['ids'])))

  index = {id_: k for k, id_ in enumerate(meta['ids'])}
  splits = splits_lib.split_ids(meta['ids'], plan.standard, split, split_seed=split_seed,
                                test_fraction=test_fraction, val_fraction=val_fraction)
  if not splits['train']:
    raise UserError(f'{root}: the training split is empty')
  train = [index[i] for i in splits['train']]
  mean, std = splits_lib.normalisation([meta['mean'][k] for k in train],
                                       [meta['std'][k] for k in train])
  parts = {k: Source(out, [index[i] for i in v], v) for k, v in splits.items()}
  return Dataset(name=name, layout=plan.layout.kind, mean=mean, std=std, root=root, split=split,
                 prepared_dir=out, **parts)


def folder_dataset(root: str, *, name: str = 'folder', split: str | None = None,
                   split_seed: int = 0, test_fraction: float = 0.2,
                   val_fraction: float = 0.2, split_dir: str = '') -> Dataset:
  """A :class:`Dataset` of :class:`FolderSource`s, checked but not prepared."""
  plan, infos, splits = plan_lib.survey(root, name=name, split=split, split_seed=split_seed,
                                        test_fraction=test_fraction, val_fraction=val_fraction,
                                        split_dir=split_dir)
  if plan.problems:
    raise plan_lib.as_error(plan.problems, root)
  mean, std = splits_lib.normalisation([infos[i].mean for i in splits['train']],
                                       [infos[i].std for i in splits['train']])
  parts = {k: FolderSource(root, [(i, *plan.items[i]) for i in v]) for k, v in splits.items()}
  return Dataset(name=name, layout=plan.layout.kind, mean=mean, std=std, root=root,
                 split=plan.split, **parts)
