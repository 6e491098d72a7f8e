"""Dataset folders on disk: layouts, splits, normalisation, prepared data and a CLI.

Layouts (detected from the folder that ``data.root`` names)::

  basicirstd  images/ masks/ img_idx/train_<NAME>.txt img_idx/test_<NAME>.txt
  dnanet      images/ masks/ <a>_<b>/train.txt <a>_<b>/test.txt   (50_50 preferred)
  irstd1k     IRSTD1k_Img/ IRSTD1k_Label/ trainval.txt test.txt
  mshnet      images/ masks/ trainval.txt (or train.txt) test.txt
  nuaa        images/Misc_N.png masks/Misc_N_pixels0.png idx_427/trainval.txt test.txt
  folder      images/ masks/ and no split files (random split only)

Images are ``.png``, ``.bmp``, ``.jpg`` or ``.jpeg``; masks ``.png`` or ``.bmp`` with the
image's stem, or the stem plus ``_pixels0`` (NUAA). Split files hold one id per line;
every line is stripped (CRLF or LF, with or without a final newline), blank lines are
skipped and a trailing image extension is dropped. Images are read as 8-bit grey
(colour files, such as NUDT-SIRST's RGB copies of a grey image, go through
``convert('L')``). Masks are binarised to {0, 1} at ``> 127``; a mask file whose values
are all 0 or 1 is taken as a 0/1 label image as it is.

Splits (deterministic, seeded only by ``data.split_seed``, never by the model seed):

* ``standard``: the dataset's split files; their train (or trainval) part is the training
  split and their test part the test split.
* ``random`` (the paper's): every image with a mask, ids sorted, then
  ``rng = numpy.random.default_rng(split_seed)`` and ``rng.permutation`` picks
  ``round(n * test_fraction)`` test images.

Then ``round(n_train * val_fraction)`` training images (at least one when the fraction
is above zero) are held out as validation by the next ``rng.permutation`` of the
sorted training ids, from the same generator (a fresh ``default_rng(split_seed)`` for the
standard split). Each split is returned in sorted id order.

Normalisation: the mean of the per-image means and the mean of the per-image standard
deviations (population std) of the training split after the hold-out, on the 0..255
scale, as the field's code computes it.

:func:`load_dataset` prepares the folder once as TFDS ``array_record`` data (see
:mod:`limijax.tfds_builders` for where it goes and when it is rebuilt) and returns
random-access sources over it. :func:`inspect` reads the folder directly and lists every
problem. From a shell::

  python -m limijax.data --root=DIR [--json] [--split=standard|random] [--preview=FILE.png]
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import operator
import os
import pathlib
import re
import shlex
import shutil
import threading
from typing import Any, Iterator, Sequence

from absl import flags
import numpy as np
from PIL import Image

from limijax.errors import UserError

FLAGS = flags.FLAGS

IMAGE_EXTS = ('.png', '.bmp', '.jpg', '.jpeg')  # preference order for duplicate stems
MASK_EXTS = ('.png', '.bmp')
NUAA_MASK_SUFFIX = '_pixels0'
NAMES = ('synthetic', 'nudt', 'irstd1k', 'nuaa', 'folder')
SPLITS = ('standard', 'random')
# BasicIRSTD names its split files after the dataset: img_idx/train_<NAME>.txt
BASIC_NAMES = {'nudt': 'NUDT-SIRST', 'irstd1k': 'IRSTD-1K', 'nuaa': 'NUAA-SIRST'}
DEFAULT_DATA_DIR = os.path.join('~', '.cache', 'limijax', 'tfds')

# A mask is binary-ish when at most this share of its pixels lies strictly between
# the two levels; anti-aliased 0/255 masks stay far below it (only target edges),
# a grey image or a soft heat map saved as a mask does not.
_MID_LOW, _MID_HIGH, _MAX_MID_SHARE = 10, 245, 0.05
_WIDE_MODES = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')


# --------------------------------------------------------------------------- files


def _load(path: str, what: str) -> Image.Image:
  try:
    with Image.open(path) as im:
      im.load()  # PIL opens lazily: a truncated file only fails here
      return im.copy()
  except FileNotFoundError:
    raise UserError(f'{path}: no such {what} file') from None
  except Exception as e:  # PIL raises many types for a damaged file
    raise UserError(f'{path}: cannot read {what} ({e})') from None


def _grey(im: Image.Image, path: str, what: str) -> np.ndarray:
  if im.mode in _WIDE_MODES:
    raise UserError(f'{path}: {what} has mode {im.mode}; only 8-bit files are read')
  return np.asarray(im.convert('L'), dtype=np.uint8)


def _channels(im: Image.Image) -> tuple[int, bool]:
  """(stored channel count, whether its colour channels differ)."""
  bands = im.getbands()
  if len(bands) < 3 or im.mode == 'P':
    return len(bands), False
  a = np.asarray(im.convert('RGB'))
  colour = not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]))
  return len(bands), colour


def read_image(path: str) -> np.ndarray:
  """An image file as 8-bit grey, shape (H, W); UserError naming the file if it fails."""
  return _grey(_load(path, 'image'), path, 'image')


def _binarise(a: np.ndarray, path: str) -> np.ndarray:
  if a.size and a.max() <= 1:  # already a 0/1 label image
    return a.astype(np.uint8)
  mid = np.count_nonzero((a > _MID_LOW) & (a < _MID_HIGH))
  if mid > _MAX_MID_SHARE * a.size:
    raise UserError(f'{path}: not a binary mask ({100 * mid / a.size:.0f}% of its pixels '
                    f'are neither near 0 nor near 255)')
  return (a > 127).astype(np.uint8)


def read_mask(path: str) -> np.ndarray:
  """A mask file as uint8 {0, 1}, shape (H, W); UserError naming the file if it fails."""
  return _binarise(_grey(_load(path, 'mask'), path, 'mask'), path)


def read_split_file(path: str) -> list[str]:
  """The ids of a split file: lines stripped, blanks and duplicates dropped."""
  try:
    with open(path, 'rb') as f:
      text = f.read().decode('utf-8-sig')  # a BOM would otherwise stick to the first id
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f'{path}: cannot read split file ({e})') from None
  ids = []
  for line in text.splitlines():  # handles \n, \r\n and \r alike
    id_ = line.strip()
    if id_.lower().endswith(IMAGE_EXTS):
      id_ = os.path.splitext(id_)[0]
    if id_:
      ids.append(id_)
  return list(dict.fromkeys(ids))


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


# -------------------------------------------------------------------------- layout


@dataclasses.dataclass
class Layout:
  """What :func:`detect_layout` found in a folder; paths are relative to ``root``."""

  root: str
  kind: str | None  # None: no recognisable layout (see problems)
  image_dir: str = ''
  mask_dir: str = ''
  split_files: dict[str, str] | None = None  # {'train': rel, 'test': rel}, or None
  no_split_reason: str = ''  # why split_files is None
  problems: list[str] = dataclasses.field(default_factory=list)
  warnings: list[str] = dataclasses.field(default_factory=list)


def _isdir(root: str, *rel: str) -> bool:
  return os.path.isdir(os.path.join(root, *rel))


def _isfile(root: str, *rel: str) -> bool:
  return os.path.isfile(os.path.join(root, *rel))


def _listdir(path: str) -> list[str]:
  try:
    return sorted(f for f in os.listdir(path) if not f.startswith('.'))
  except OSError:
    return []


def _root_pair(root: str, folder: str, train_names: Sequence[str]) -> dict[str, str] | None:
  for train in train_names:
    if _isfile(root, folder, train) and _isfile(root, folder, 'test.txt'):
      return {'train': os.path.join(folder, train), 'test': os.path.join(folder, 'test.txt')}
  return None


def _basic_pair(root: str, name: str, layout: Layout) -> bool:
  """Fills in BasicIRSTD's img_idx split files; False when img_idx has no pair."""
  files = _listdir(os.path.join(root, 'img_idx'))
  trains = {f[len('train_'):-4] for f in files if f.startswith('train_') and f.endswith('.txt')}
  tests = {f[len('test_'):-4] for f in files if f.startswith('test_') and f.endswith('.txt')}
  pairs = sorted(trains & tests)
  if not pairs:
    return False
  layout.kind = 'basicirstd'
  wanted = [os.path.basename(os.path.normpath(root)), BASIC_NAMES.get(name, '')]
  chosen = None
  for want in wanted:  # the folder is usually named after the dataset, as in BasicIRSTD
    chosen = next((p for p in pairs if want and p.lower() == want.lower()), None)
    if chosen:
      break
  if chosen is None and len(pairs) == 1:
    chosen = pairs[0]
  if chosen is None:
    layout.no_split_reason = (f'img_idx/ holds split files of several datasets '
                              f'({", ".join(pairs)}); choose one with data.name or --name')
    return True
  layout.split_files = {'train': os.path.join('img_idx', f'train_{chosen}.txt'),
                        'test': os.path.join('img_idx', f'test_{chosen}.txt')}
  return True


def detect_layout(root: str, name: str = '') -> Layout:
  """Recognises one of the layouts of the module docstring; reads no image."""
  layout = Layout(root=root, kind=None)
  if not os.path.isdir(root):
    layout.problems.append(f'{root}: no such folder')
    return layout
  if _isdir(root, 'IRSTD1k_Img') and _isdir(root, 'IRSTD1k_Label'):
    layout.kind, layout.image_dir, layout.mask_dir = 'irstd1k', 'IRSTD1k_Img', 'IRSTD1k_Label'
    layout.split_files = _root_pair(root, '', ('trainval.txt',))
    if layout.split_files is None:
      layout.no_split_reason = 'no trainval.txt and test.txt beside IRSTD1k_Img/'
    return layout
  if not (_isdir(root, 'images') and _isdir(root, 'masks')):
    inner = [d for d in _listdir(root)
             if (_isdir(root, d, 'images') and _isdir(root, d, 'masks'))
             or _isdir(root, d, 'IRSTD1k_Img')]
    hint = f'; it holds dataset folders ({", ".join(inner)}): point at one' if inner else ''
    layout.problems.append(
        f'{root}: no recognisable dataset layout (expected images/ and masks/, or '
        f'IRSTD1k_Img/ and IRSTD1k_Label/){hint}')
    return layout
  layout.image_dir, layout.mask_dir = 'images', 'masks'
  if _isdir(root, 'img_idx') and _basic_pair(root, name, layout):
    return layout
  idx = [d for d in _listdir(root)
         if d.startswith('idx_') and _root_pair(root, d, ('trainval.txt',))]
  if idx:
    chosen = 'idx_427' if 'idx_427' in idx else idx[0]
    layout.kind, layout.split_files = 'nuaa', _root_pair(root, chosen, ('trainval.txt',))
    return layout
  ratios = [d for d in _listdir(root)
            if re.fullmatch(r'\d+_\d+', d) and _root_pair(root, d, ('train.txt',))]
  if ratios:
    chosen = '50_50' if '50_50' in ratios else ratios[0]
    if len(ratios) > 1:
      layout.warnings.append(f'{root}: several split folders ({", ".join(ratios)}); using {chosen}')
    layout.kind, layout.split_files = 'dnanet', _root_pair(root, chosen, ('train.txt',))
    return layout
  pair = _root_pair(root, '', ('trainval.txt', 'train.txt'))
  if pair:
    layout.kind, layout.split_files = 'mshnet', pair
    return layout
  layout.kind = 'folder'
  layout.no_split_reason = 'the folder has no split files'
  return layout


def _index(folder: str, exts: Sequence[str]) -> tuple[dict[str, str], list[str]]:
  """{stem: file name} of the files in ``folder`` with one of ``exts``; duplicate stems."""
  found: dict[str, str] = {}
  dups = []
  for f in _listdir(folder):
    stem, ext = os.path.splitext(f)
    if ext.lower() not in exts or not os.path.isfile(os.path.join(folder, f)):
      continue
    if stem in found:
      dups.append(stem)
      if exts.index(ext.lower()) >= exts.index(os.path.splitext(found[stem])[1].lower()):
        continue
    found[stem] = f
  return found, dups


# ---------------------------------------------------------------------------- plan


@dataclasses.dataclass
class _Plan:
  """The files a split uses, found without reading pixels."""

  layout: Layout
  split: str
  items: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # id -> rel paths
  standard: dict[str, list[str]] | None = None  # split files' ids that have an image
  problems: list[str] = dataclasses.field(default_factory=list)
  warnings: list[str] = dataclasses.field(default_factory=list)

  def path(self, rel: str) -> str:
    return os.path.join(self.layout.root, rel)


def _short(ids: Sequence[str], n: int = 5) -> str:
  more = f', ... ({len(ids) - n} more)' if len(ids) > n else ''
  return ', '.join(ids[:n]) + more


def _make_plan(root: str, name: str, split: str | None) -> _Plan:
  layout = detect_layout(root, name)
  if split is None:  # the CLI's default: the split files when there are any
    ambiguous = layout.kind == 'basicirstd'  # has split files, just not one choice
    split = 'standard' if layout.split_files or ambiguous else 'random'
  plan = _Plan(layout=layout, split=split, problems=list(layout.problems),
               warnings=list(layout.warnings))
  if layout.kind is None:
    return plan
  image_dir, mask_dir = plan.path(layout.image_dir), plan.path(layout.mask_dir)
  images, dups = _index(image_dir, IMAGE_EXTS)
  masks, _ = _index(mask_dir, MASK_EXTS)
  if dups:
    plan.warnings.append(f'{image_dir}: several files share a stem ({_short(dups)}); '
                         f'preferring {" > ".join(IMAGE_EXTS)}')
  if not images:
    plan.problems.append(f'{image_dir}: no images ({", ".join(IMAGE_EXTS)})')
    return plan

  if split == 'standard':
    if layout.split_files is None:
      plan.problems.append(f'{root}: no split files for the standard split '
                           f'({layout.no_split_reason}); use the random split')
      return plan
    plan.standard = {}
    for part, rel in layout.split_files.items():
      path = plan.path(rel)
      try:
        ids = read_split_file(path)
      except UserError as e:
        plan.problems.append(str(e))
        ids = []
      else:
        if not ids:
          plan.problems.append(f'{path}: empty split file')
      missing = [i for i in ids if i not in images]
      if missing:
        plan.problems.append(f'{path}: {len(missing)} id(s) with no image in '
                             f'{image_dir}: {_short(missing)}')
      plan.standard[part] = [i for i in ids if i in images]
    both = sorted(set(plan.standard['train']) & set(plan.standard['test']))
    if both:
      plan.problems.append(f'{plan.path(layout.split_files["test"])}: {len(both)} test id(s) '
                           f'also in the training split file: {_short(both)}')
    used = sorted(set(plan.standard['train']) | set(plan.standard['test']))
    if len(used) < len(images):
      plan.warnings.append(f'{image_dir}: {len(images) - len(used)} image(s) in no split file '
                           f'(unused by the standard split)')
  elif split == 'random':
    used = sorted(images)
  else:
    plan.problems.append(f'split: unknown split {split!r}; expected one of {", ".join(SPLITS)}')
    return plan

  for id_ in used:
    mask = masks.get(id_) or masks.get(id_ + NUAA_MASK_SUFFIX)
    image_rel = os.path.join(layout.image_dir, images[id_])
    if mask is None:
      plan.problems.append(
          f'{plan.path(image_rel)}: no mask (looked in {mask_dir} for {id_} or '
          f'{id_}{NUAA_MASK_SUFFIX} with {" or ".join(MASK_EXTS)})')
      continue
    plan.items[id_] = (image_rel, os.path.join(layout.mask_dir, mask))
  orphans = [m for m in masks if m not in images and
             not (m.endswith(NUAA_MASK_SUFFIX) and m[:-len(NUAA_MASK_SUFFIX)] in images)]
  if orphans:
    plan.warnings.append(f'{mask_dir}: {len(orphans)} mask(s) with no image: {_short(orphans)}')
  return plan


@dataclasses.dataclass
class _ImageInfo:
  mean: float
  std: float
  height: int
  width: int
  channels: int
  colour: bool


def _check_one(plan: _Plan, id_: str) -> tuple[_ImageInfo | None, list[str], list[str]]:
  image_path, mask_path = (plan.path(r) for r in plan.items[id_])
  problems, warnings = [], []
  try:
    im = _load(image_path, 'image')
    image = _grey(im, image_path, 'image')
    channels, colour = _channels(im)
  except UserError as e:
    problems.append(str(e))
    image = None
  try:
    mask = read_mask(mask_path)
  except UserError as e:
    problems.append(str(e))
    mask = None
  if image is None or mask is None:
    return None, problems, warnings
  if image.shape != mask.shape:
    problems.append(f'{mask_path}: size {mask.shape[1]}x{mask.shape[0]} differs from its image '
                    f'{image_path} ({image.shape[1]}x{image.shape[0]})')
    return None, problems, warnings
  if mask.mean() > 0.5:
    warnings.append(f'{mask_path}: more than half of the mask is target (inverted?)')
  info = _ImageInfo(float(image.mean()), float(image.std()), image.shape[0], image.shape[1],
                    channels, colour)
  return info, problems, warnings


def _check_files(plan: _Plan) -> dict[str, _ImageInfo]:
  """Reads every image and mask of the plan; adds problems; returns per-image stats."""
  ids = sorted(plan.items)
  workers = min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL
    results = list(pool.map(lambda i: _check_one(plan, i), ids))
  infos = {}
  colour = []
  for id_, (info, problems, warnings) in zip(ids, results):
    plan.problems.extend(problems)
    plan.warnings.extend(warnings)
    if info is not None:
      infos[id_] = info
      if info.colour:
        colour.append(id_)
  if colour:
    plan.warnings.append(f'{len(colour)} colour image(s) converted to grey: {_short(colour)}')
  return infos


# -------------------------------------------------------------------- splits, stats


def _share(n: int, fraction: float) -> int:
  """round(n * fraction), kept to 1..n-1 when the fraction and n allow it."""
  if fraction <= 0 or n < 2:
    return 0
  k = int(np.floor(n * fraction + 0.5))
  return min(max(k, 1), n - 1)


def split_ids(ids: Sequence[str], standard: dict[str, list[str]] | None, split: str, *,
              split_seed: int, test_fraction: float,
              val_fraction: float) -> dict[str, list[str]]:
  """{'train', 'val', 'test'}: sorted ids, as the module docstring describes."""
  rng = np.random.default_rng(split_seed)
  if split == 'standard':
    if standard is None:
      raise UserError('data.split: standard needs split files; this folder has none')
    train, test = sorted(standard['train']), sorted(standard['test'])
  elif split == 'random':
    pool = sorted(ids)
    perm = rng.permutation(len(pool))
    n_test = _share(len(pool), test_fraction)
    test = sorted(pool[i] for i in perm[:n_test])
    train = sorted(pool[i] for i in perm[n_test:])
  else:
    raise UserError(f'data.split: unknown split {split!r}; expected one of {", ".join(SPLITS)}')
  perm = rng.permutation(len(train))
  n_val = _share(len(train), val_fraction)
  val = sorted(train[i] for i in perm[:n_val])
  train = sorted(train[i] for i in perm[n_val:])
  return {'train': train, 'val': val, 'test': test}


def normalisation(means: Sequence[float], stds: Sequence[float]) -> tuple[float, float]:
  """(mean of per-image means, mean of per-image stds) on the 0..255 scale."""
  if not len(means):
    return float('nan'), float('nan')
  return float(np.mean(means)), float(np.mean(stds))


# ---------------------------------------------------------------------------- sources


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
        from limijax import tfds_builders  # pylint: disable=g-import-not-at-top
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
    from limijax import tfds_builders  # pylint: disable=g-import-not-at-top
    return tfds_builders.decode(self._source()[self._record(i)])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    from limijax import tfds_builders  # pylint: disable=g-import-not-at-top
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
    return {'image': read_image(os.path.join(self.root, image_rel)),
            'mask': read_mask(os.path.join(self.root, mask_rel)), 'id': id_}

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


# ---------------------------------------------------------------------------- inspect


def _counts(values) -> dict[str, int]:
  out: dict[str, int] = {}
  for v in values:
    out[str(v)] = out.get(str(v), 0) + 1
  return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _survey(root: str, *, name: str = '', split: str | None = None, split_seed: int = 0,
            test_fraction: float = 0.2, val_fraction: float = 0.2):
  plan = _make_plan(root, name, split)
  infos = _check_files(plan) if plan.items else {}
  splits = {'train': [], 'val': [], 'test': []}
  if plan.layout.kind is not None and (plan.split == 'random' or plan.standard is not None):
    splits = split_ids(sorted(plan.items), plan.standard, plan.split, split_seed=split_seed,
                       test_fraction=test_fraction, val_fraction=val_fraction)
  if plan.layout.kind is not None and not plan.problems and not splits['train']:
    plan.problems.append(f'{root}: the training split is empty')
  return plan, infos, splits


def inspect(root: str, *, name: str = '', split: str | None = None, split_seed: int = 0,
            test_fraction: float = 0.2, val_fraction: float = 0.2) -> dict[str, Any]:
  """Everything the loader sees in ``root``, read straight from its files.

  ``split`` None picks ``standard`` when the folder has split files, else ``random``.
  ``problems`` lists every reason the folder cannot be used for training (each names
  a file); ``warnings`` lists oddities that do not stop training.
  """
  plan, infos, splits = _survey(root, name=name, split=split, split_seed=split_seed,
                                test_fraction=test_fraction, val_fraction=val_fraction)
  train = [infos[i] for i in splits['train'] if i in infos]
  mean, std = normalisation([i.mean for i in train], [i.std for i in train])
  return {
      'root': root,
      'layout': plan.layout.kind,
      'split': plan.split,
      'split_files': plan.layout.split_files if plan.split == 'standard' else None,
      'split_seed': split_seed,
      'test_fraction': test_fraction if plan.split == 'random' else None,
      'val_fraction': val_fraction,
      'splits': {k: len(v) for k, v in splits.items()},
      'num_images': len(plan.items),
      'image_sizes': _counts(f'{i.width}x{i.height}' for i in infos.values()),
      'channels': _counts(i.channels for i in infos.values()),
      'mean': None if np.isnan(mean) else round(mean, 4),
      'std': None if np.isnan(std) else round(std, 4),
      'usable': not plan.problems,
      'problems': plan.problems,
      'warnings': plan.warnings,
  }


def _as_error(problems: Sequence[str], root: str) -> UserError:
  more = len(problems) - 1
  hint = (f' (and {more} more problem{"s" * (more > 1)}; list them with '
          f'python -m limijax.data --root={shlex.quote(root)})') if more else ''
  return UserError(problems[0] + hint)


def folder_dataset(root: str, *, name: str = 'folder', split: str | None = None,
                   split_seed: int = 0, test_fraction: float = 0.2,
                   val_fraction: float = 0.2) -> Dataset:
  """A :class:`Dataset` of :class:`FolderSource`s, checked but not prepared."""
  plan, infos, splits = _survey(root, name=name, split=split, split_seed=split_seed,
                                test_fraction=test_fraction, val_fraction=val_fraction)
  if plan.problems:
    raise _as_error(plan.problems, root)
  mean, std = normalisation([infos[i].mean for i in splits['train']],
                            [infos[i].std for i in splits['train']])
  parts = {k: FolderSource(root, [(i, *plan.items[i]) for i in v]) for k, v in splits.items()}
  return Dataset(name=name, layout=plan.layout.kind, mean=mean, std=std, root=root,
                 split=plan.split, **parts)


# ------------------------------------------------------------------------------ load


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


def _fingerprint(plan: _Plan) -> str:
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
  with file_lock(root + '.lock'):
    if os.path.isfile(done):
      return root
    tmp = f'{root}.tmp{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, 'images'))
    os.makedirs(os.path.join(tmp, 'masks'))
    try:
      for id_, image, mask in synthetic.generate(n, size, seed):
        image = np.asarray(image, dtype=np.uint8)
        mask = (np.asarray(mask) > 0).astype(np.uint8) * 255  # viewable 0/255 on disk
        Image.fromarray(image).save(os.path.join(tmp, 'images', f'{id_}.png'))
        Image.fromarray(mask).save(os.path.join(tmp, 'masks', f'{id_}.png'))
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
  used for training.
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
      raise UserError(f'data.root: {root} is not a folder')
    split = str(_get(data_cfg, 'split', 'standard'))
    if split not in SPLITS:
      raise UserError(f'data.split: unknown split {split!r}; expected one of {", ".join(SPLITS)}')

  plan = _make_plan(root, name, split)
  if plan.problems:
    raise _as_error(plan.problems, root)

  from limijax import tfds_builders  # pylint: disable=g-import-not-at-top
  config_name = _fingerprint(plan)
  out = tfds_builders.prepared_dir(data_dir, name, config_name)
  meta = tfds_builders.read_meta(out)
  if meta is None:
    infos = _check_files(plan)
    if plan.problems:
      raise _as_error(plan.problems, root)
    ids = sorted(plan.items)
    meta = {
        'root': os.path.abspath(root), 'layout': plan.layout.kind,
        'split_files': plan.layout.split_files, 'standard': plan.standard, 'ids': ids,
        'mean': [infos[i].mean for i in ids], 'std': [infos[i].std for i in ids],
        'height': [infos[i].height for i in ids], 'width': [infos[i].width for i in ids],
    }
    items = [(i, *plan.items[i]) for i in ids]
    out = tfds_builders.prepare(name=name, root=os.path.abspath(root), config_name=config_name,
                                items=items, meta=meta, data_dir=data_dir)
    meta = tfds_builders.read_meta(out) or meta

  index = {id_: k for k, id_ in enumerate(meta['ids'])}
  splits = split_ids(meta['ids'], plan.standard, split, split_seed=split_seed,
                     test_fraction=test_fraction, val_fraction=val_fraction)
  if not splits['train']:
    raise UserError(f'{root}: the training split is empty')
  train = [index[i] for i in splits['train']]
  mean, std = normalisation([meta['mean'][k] for k in train], [meta['std'][k] for k in train])
  parts = {k: Source(out, [index[i] for i in v], v) for k, v in splits.items()}
  return Dataset(name=name, layout=plan.layout.kind, mean=mean, std=std, root=root, split=split,
                 prepared_dir=out, **parts)


# -------------------------------------------------------------------------------- CLI


def format_report(report: dict[str, Any]) -> str:
  """The human-readable form of :func:`inspect`'s result."""
  lines = [f'root:      {report["root"]}', f'layout:    {report["layout"] or "not recognised"}']
  if report['layout']:
    split = report['split']
    if report['split_files']:
      split += ' (' + ', '.join(report['split_files'].values()) + ')'
    elif report['test_fraction'] is not None:
      split += f' (test_fraction {report["test_fraction"]}, split_seed {report["split_seed"]})'
    lines.append(f'split:     {split}; val_fraction {report["val_fraction"]} of train held out')
    s = report['splits']
    lines.append(f'images:    train {s["train"]}, val {s["val"]}, test {s["test"]} '
                 f'({report["num_images"]} with masks)')
    sizes = ', '.join(f'{k} ({v})' for k, v in report['image_sizes'].items()) or '-'
    lines.append(f'sizes:     {sizes}  (width x height)')
    channels = ', '.join(f'{k} ({v})' for k, v in report['channels'].items()) or '-'
    lines.append(f'channels:  {channels}  (read as 1-channel grey)')
    if report['mean'] is not None:
      lines.append(f'mean/std:  {report["mean"]:.2f} / {report["std"]:.2f}  '
                   f'(0..255, training split)')
  for w in report['warnings']:
    lines.append(f'warning:   {w}')
  for p in report['problems']:
    lines.append(f'problem:   {p}')
  lines.append(f'usable:    {"yes" if report["usable"] else "no"}')
  return '\n'.join(lines)


def _define_flags() -> None:
  # Defined only when run as a program: modules that import this one (evaluate, main)
  # have flags of their own, some with the same names.
  flags.DEFINE_string('root', None, 'Dataset folder to inspect.')
  flags.DEFINE_bool('json', False, 'End the output with the report as one JSON line.')
  flags.DEFINE_string('split', None, 'standard or random (default: standard when the folder '
                      'has split files).')
  flags.DEFINE_integer('split_seed', 0, 'Seed of the random split and of the val hold-out.')
  flags.DEFINE_float('test_fraction', 0.2, 'Test share of the random split.')
  flags.DEFINE_float('val_fraction', 0.2, 'Share of the training split held out for validation.')
  flags.DEFINE_string('name', '', 'Dataset name (nudt, irstd1k, nuaa) when img_idx/ holds '
                      'split files of several datasets.')
  flags.DEFINE_string('preview', None, 'Also write a PNG of augmented training examples here.')
  flags.DEFINE_integer('image_size', 256, 'Training crop size shown by --preview.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS.root:
    raise UserError('--root: not set; name the dataset folder to inspect')
  if FLAGS.split is not None and FLAGS.split not in SPLITS:
    raise UserError(f'--split: unknown split {FLAGS.split!r}; expected one of {", ".join(SPLITS)}')
  for key in ('test_fraction', 'val_fraction'):
    if not 0.0 <= FLAGS[key].value < 1.0:
      raise UserError(f'--{key}: {FLAGS[key].value} is not in [0, 1)')
  report = inspect(FLAGS.root, name=FLAGS.name, split=FLAGS.split, split_seed=FLAGS.split_seed,
                   test_fraction=FLAGS.test_fraction, val_fraction=FLAGS.val_fraction)
  print(format_report(report), flush=True)
  if FLAGS.preview and report['usable']:
    from limijax import defaults  # pylint: disable=g-import-not-at-top
    from limijax import input_pipeline  # pylint: disable=g-import-not-at-top
    dataset = folder_dataset(FLAGS.root, name=FLAGS.name or 'folder', split=report['split'],
                             split_seed=FLAGS.split_seed, test_fraction=FLAGS.test_fraction,
                             val_fraction=FLAGS.val_fraction)
    cfg = defaults.base_config()  # the preview shows what a default run would train on
    input_pipeline.save_preview(
        dataset.train, FLAGS.preview, image_size=FLAGS.image_size, mean=dataset.mean,
        std=dataset.std, seed=cfg.seed, its_cfg=cfg.data.its,
        crop_target_prob=cfg.data.crop_target_prob)
    print(f'preview:   {FLAGS.preview}', flush=True)
  if FLAGS.json:
    print(json.dumps(report), flush=True)
  if not report['usable']:
    raise _as_error(report['problems'] or [f'{FLAGS.root}: cannot be used for training'],
                    FLAGS.root)


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from limijax.errors import cli_main  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(cli_main(main))
