"""Which layout a dataset folder has, and its split files; reads no image.

Layouts (detected from the folder that ``data.root`` names)::

  basicirstd  images/ masks/ img_idx/train_<NAME>.txt img_idx/test_<NAME>.txt
  dnanet      images/ masks/ <a>_<b>/train.txt <a>_<b>/test.txt   (50_50 preferred)
  irstd1k     IRSTD1k_Img/ IRSTD1k_Label/ trainval.txt test.txt
  mshnet      images/ masks/ trainval.txt (or train.txt) test.txt
  nuaa        images/Misc_N.png masks/Misc_N_pixels0.png idx_427/trainval.txt test.txt
  folder      images/ masks/ and no split files (random split only)

Images are ``.png``, ``.bmp``, ``.jpg`` or ``.jpeg``; masks ``.png`` or ``.bmp`` with the
image's stem, or the stem plus ``_pixels0`` (NUAA). ``data.split_dir`` (a folder with
``trainval.txt`` or ``train.txt``, and ``test.txt``) replaces any layout's own split
files (:func:`split_dir_files`), e.g. NUAA-SIRST's 50:50 split of DNA-Net and
BasicIRSTD beside its own ``idx_427``. Split files hold one id per line;
every line is stripped (CRLF or LF, with or without a final newline), blank lines are
skipped and a trailing image extension is dropped.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

from limijax.errors import UserError

IMAGE_EXTS = ('.png', '.bmp', '.jpg', '.jpeg')  # preference order for duplicate stems
MASK_EXTS = ('.png', '.bmp')
NUAA_MASK_SUFFIX = '_pixels0'
# BasicIRSTD names its split files after the dataset: img_idx/train_<NAME>.txt
BASIC_NAMES = {'nudt': 'NUDT-SIRST', 'irstd1k': 'IRSTD-1K', 'nuaa': 'NUAA-SIRST'}


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
  inner: list[str] = dataclasses.field(default_factory=list)  # dataset folders inside root


def _isdir(root: str, *rel: str) -> bool:
  return os.path.isdir(os.path.join(root, *rel))


def _isfile(root: str, *rel: str) -> bool:
  return os.path.isfile(os.path.join(root, *rel))


def listdir(path: str) -> list[str]:
  """The sorted entries of ``path`` that do not start with a dot; [] when unreadable."""
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
  files = listdir(os.path.join(root, 'img_idx'))
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
    layout.inner = [d for d in listdir(root)
                    if (_isdir(root, d, 'images') and _isdir(root, d, 'masks'))
                    or _isdir(root, d, 'IRSTD1k_Img')]
    hint = (f'; it holds dataset folders ({", ".join(layout.inner)}): point at one'
            if layout.inner else '')
    layout.problems.append(
        f'{root}: no recognisable dataset layout (expected images/ and masks/, or '
        f'IRSTD1k_Img/ and IRSTD1k_Label/){hint}')
    return layout
  layout.image_dir, layout.mask_dir = 'images', 'masks'
  if _isdir(root, 'img_idx') and _basic_pair(root, name, layout):
    return layout
  idx = [d for d in listdir(root)
         if d.startswith('idx_') and _root_pair(root, d, ('trainval.txt',))]
  if idx:
    chosen = 'idx_427' if 'idx_427' in idx else idx[0]
    layout.kind, layout.split_files = 'nuaa', _root_pair(root, chosen, ('trainval.txt',))
    return layout
  ratios = [d for d in listdir(root)
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


def split_dir_files(split_dir: str) -> dict[str, str]:
  """{'train': path, 'test': path} of a folder of split lists (``data.split_dir``):
  ``trainval.txt`` (else ``train.txt``) and ``test.txt``; UserError naming what is
  missing."""
  if not os.path.isdir(split_dir):
    raise UserError(f'data.split_dir: {split_dir} is not a folder')
  train = next((os.path.join(split_dir, f) for f in ('trainval.txt', 'train.txt')
                if os.path.isfile(os.path.join(split_dir, f))), None)
  test = os.path.join(split_dir, 'test.txt')
  if train is None or not os.path.isfile(test):
    missing = ' and '.join(n for n, ok in (('trainval.txt or train.txt', train),
                                           ('test.txt', os.path.isfile(test))) if not ok)
    raise UserError(f'data.split_dir: {split_dir} has no {missing}')
  return {'train': os.path.abspath(train), 'test': os.path.abspath(test)}


def index_folder(folder: str, exts: Sequence[str]) -> tuple[dict[str, str], list[str]]:
  """{stem: file name} of the files in ``folder`` with one of ``exts``; duplicate stems."""
  found: dict[str, str] = {}
  dups = []
  for f in listdir(folder):
    stem, ext = os.path.splitext(f)
    if ext.lower() not in exts or not os.path.isfile(os.path.join(folder, f)):
      continue
    if stem in found:
      dups.append(stem)
      if exts.index(ext.lower()) >= exts.index(os.path.splitext(found[stem])[1].lower()):
        continue
    found[stem] = f
  return found, dups
