"""The image and mask files a split of a dataset folder uses, and one check of each.

:func:`make_plan` pairs every image with its mask and reads the split files, without
reading pixels; :func:`check_files` then reads every pair once (images and masks through
:mod:`limijax.image_io`) for its statistics and problems; :func:`survey` does both and
splits the ids. Problems (each naming a file) stop training; warnings do not.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shlex
from typing import Sequence

import numpy as np
from PIL import Image

from limijax import image_io
from limijax.data import layouts
from limijax.data import splits as splits_lib
from limijax.errors import UserError


@dataclasses.dataclass
class Plan:
  """The files a split uses, found without reading pixels."""

  layout: layouts.Layout
  split: str
  items: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # id -> rel paths
  standard: dict[str, list[str]] | None = None  # split files' ids that have an image
  problems: list[str] = dataclasses.field(default_factory=list)
  warnings: list[str] = dataclasses.field(default_factory=list)
  non_binary_masks: int = 0  # masks holding values other than 0 and 255 (check_files)
  resized_masks: list[str] = dataclasses.field(default_factory=list)  # lines (check_files)

  def path(self, rel: str) -> str:
    return os.path.join(self.layout.root, rel)


def short(ids: Sequence[str], n: int = 5) -> str:
  more = f', ... ({len(ids) - n} more)' if len(ids) > n else ''
  return ', '.join(ids[:n]) + more


def make_plan(root: str, name: str, split: str | None, split_dir: str = '') -> Plan:
  """The layout of ``root`` and the (image, mask) pair of every id ``split`` uses.

  A ``split_dir`` (``data.split_dir``) replaces the layout's split files with its own
  (:func:`layouts.split_dir_files`); it needs the standard split.
  """
  layout = layouts.detect_layout(root, name)
  if split_dir and layout.kind is not None:
    if split == 'random':
      raise UserError(f'data.split_dir: {split_dir} holds split lists, which the random '
                      f'split does not use; set data.split=standard or leave split_dir empty')
    layout.split_files = layouts.split_dir_files(split_dir)
    layout.no_split_reason = ''
  if split is None:  # the CLI's default: the split files when there are any
    ambiguous = layout.kind == 'basicirstd'  # has split files, just not one choice
    split = 'standard' if layout.split_files or ambiguous else 'random'
  plan = Plan(layout=layout, split=split, problems=list(layout.problems),
              warnings=list(layout.warnings))
  if layout.kind is None:
    return plan
  image_dir, mask_dir = plan.path(layout.image_dir), plan.path(layout.mask_dir)
  images, dups = layouts.index_folder(image_dir, layouts.IMAGE_EXTS)
  masks, _ = layouts.index_folder(mask_dir, layouts.MASK_EXTS)
  if dups:
    plan.warnings.append(f'{image_dir}: several files share a stem ({short(dups)}); '
                         f'preferring {" > ".join(layouts.IMAGE_EXTS)}')
  if not images:
    plan.problems.append(f'{image_dir}: no images ({", ".join(layouts.IMAGE_EXTS)})')
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
        ids = layouts.read_split_file(path)
      except UserError as e:
        plan.problems.append(str(e))
        ids = []
      else:
        if not ids:
          plan.problems.append(f'{path}: empty split file')
      missing = [i for i in ids if i not in images]
      if missing:
        plan.problems.append(f'{path}: {len(missing)} id(s) with no image in '
                             f'{image_dir}: {short(missing)}')
      plan.standard[part] = [i for i in ids if i in images]
    both = sorted(set(plan.standard['train']) & set(plan.standard['test']))
    if both:
      plan.problems.append(f'{plan.path(layout.split_files["test"])}: {len(both)} test id(s) '
                           f'also in the training split file: {short(both)}')
    used = sorted(set(plan.standard['train']) | set(plan.standard['test']))
    if len(used) < len(images):
      plan.warnings.append(f'{image_dir}: {len(images) - len(used)} image(s) in no split file '
                           f'(unused by the standard split)')
  elif split == 'random':
    used = sorted(images)
  else:
    plan.problems.append(f'split: unknown split {split!r}; expected one of '
                         f'{", ".join(splits_lib.SPLITS)}')
    return plan

  suffix = layouts.NUAA_MASK_SUFFIX
  for id_ in used:
    mask = masks.get(id_) or masks.get(id_ + suffix)
    image_rel = os.path.join(layout.image_dir, images[id_])
    if mask is None:
      plan.problems.append(
          f'{plan.path(image_rel)}: no mask (looked in {mask_dir} for {id_} or '
          f'{id_}{suffix} with {" or ".join(layouts.MASK_EXTS)})')
      continue
    plan.items[id_] = (image_rel, os.path.join(layout.mask_dir, mask))
  orphans = [m for m in masks if m not in images and
             not (m.endswith(suffix) and m[:-len(suffix)] in images)]
  if orphans:
    plan.warnings.append(f'{mask_dir}: {len(orphans)} mask(s) with no image: {short(orphans)}')
  return plan


@dataclasses.dataclass
class ImageInfo:
  mean: float
  std: float
  height: int
  width: int
  channels: int
  colour: bool
  non_binary_mask: bool  # the mask file held values other than 0 and 255
  mask_resized: str = ''  # the warning line when the mask had another size (same aspect)


def _channels(im: Image.Image) -> tuple[int, bool]:
  """(stored channel count, whether its colour channels differ)."""
  bands = im.getbands()
  if len(bands) < 3 or im.mode == 'P':
    return len(bands), False
  a = np.asarray(im.convert('RGB'))
  colour = not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]))
  return len(bands), colour


def _check_one(plan: Plan, id_: str) -> tuple[ImageInfo | None, list[str], list[str]]:
  image_path, mask_path = (plan.path(r) for r in plan.items[id_])
  problems, warnings = [], []
  try:
    im = image_io.open_image(image_path, 'image')
    image = image_io.to_grey(im, image_path, 'image')
    channels, colour = _channels(im)
  except UserError as e:
    problems.append(str(e))
    image = None
  try:
    mask, non_binary = image_io.read_mask_info(mask_path)
  except UserError as e:
    problems.append(str(e))
    mask = None
  if image is None or mask is None:
    return None, problems, warnings
  if image.shape != mask.shape:
    line = image_io.mask_size_line(mask_path, mask.shape, image_path, image.shape)
    if not image_io.mask_fits(mask.shape, image.shape):
      problems.append(line)
      return None, problems, warnings
    resized = line  # resized wherever the mask is read (image_io.read_mask_for)
    mask = image_io.fit_mask(mask, image.shape, mask_path, image_path)
  else:
    resized = ''
  if mask.mean() > 0.5:
    warnings.append(f'{mask_path}: more than half of the mask is target (inverted?)')
  info = ImageInfo(float(image.mean()), float(image.std()), image.shape[0], image.shape[1],
                   channels, colour, non_binary, resized)
  return info, problems, warnings


def check_files(plan: Plan) -> dict[str, ImageInfo]:
  """Reads every image and mask of the plan; adds problems; returns per-image stats.

  Also counts the masks holding values other than 0 and 255 (``plan.non_binary_masks``)
  and adds the one warning line about them, and one warning line for each mask of
  another size than its image but the same aspect ratio (``plan.resized_masks``; such a
  mask is resized to its image wherever it is read, by ``image_io.read_mask_for``).
  """
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
      if info.mask_resized:
        plan.resized_masks.append(info.mask_resized)
        plan.warnings.append(info.mask_resized)
      if info.colour:
        colour.append(id_)
  if colour:
    plan.warnings.append(f'{len(colour)} colour image(s) converted to grey: {short(colour)}')
  plan.non_binary_masks = sum(i.non_binary_mask for i in infos.values())
  if plan.non_binary_masks:
    plan.warnings.append(image_io.non_binary_mask_warning(plan.non_binary_masks, len(ids)))
  return infos


def survey(root: str, *, name: str = '', split: str | None = None, split_seed: int = 0,
           test_fraction: float = 0.2, val_fraction: float = 0.2, split_dir: str = ''):
  """(plan, {id: ImageInfo}, {'train', 'val', 'test': ids}) of ``root``, every file read."""
  plan = make_plan(root, name, split, split_dir)
  infos = check_files(plan) if plan.items else {}
  splits = {'train': [], 'val': [], 'test': []}
  if plan.layout.kind is not None and (plan.split == 'random' or plan.standard is not None):
    splits = splits_lib.split_ids(sorted(plan.items), plan.standard, plan.split,
                                  split_seed=split_seed, test_fraction=test_fraction,
                                  val_fraction=val_fraction)
  if plan.layout.kind is not None and not plan.problems and not splits['train']:
    plan.problems.append(f'{root}: the training split is empty')
  return plan, infos, splits


def as_error(problems: Sequence[str], root: str) -> UserError:
  """The first problem as a UserError, saying how many more there are and how to list them."""
  more = len(problems) - 1
  hint = (f' (and {more} more problem{"s" * (more > 1)}; list them with '
          f'python -m limijax.data --root={shlex.quote(root)})') if more else ''
  return UserError(problems[0] + hint)
