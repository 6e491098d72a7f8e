"""What ``python -m limijax.data`` reports about a folder: :func:`inspect` and its text."""

from __future__ import annotations

from typing import Any

import numpy as np

from limijax.data import plan as plan_lib
from limijax.data import splits as splits_lib


def _counts(values) -> dict[str, int]:
  out: dict[str, int] = {}
  for v in values:
    out[str(v)] = out.get(str(v), 0) + 1
  return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def inspect(root: str, *, name: str = '', split: str | None = None, split_seed: int = 0,
            test_fraction: float = 0.2, val_fraction: float = 0.2,
            split_dir: str = '') -> dict[str, Any]:
  """Everything the loader sees in ``root``, read straight from its files.

  ``split`` None picks ``standard`` when the folder has split files (or ``split_dir``
  names a folder of them), else ``random``.
  ``problems`` lists every reason the folder cannot be used for training (each names
  a file); ``warnings`` lists oddities that do not stop training; ``non_binary_masks``
  counts the masks holding values other than 0 and 255 (one warning says so).
  """
  plan, infos, splits = plan_lib.survey(root, name=name, split=split, split_seed=split_seed,
                                        test_fraction=test_fraction, val_fraction=val_fraction,
                                        split_dir=split_dir)
  train = [infos[i] for i in splits['train'] if i in infos]
  mean, std = splits_lib.normalisation([i.mean for i in train], [i.std for i in train])
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
      'non_binary_masks': plan.non_binary_masks,
      'usable': not plan.problems,
      'problems': plan.problems,
      'warnings': plan.warnings,
  }


def _area(size: str) -> tuple[int, int, int]:
  w, h = (int(v) for v in size.split('x'))
  return w * h, w, h


def format_sizes(counts: dict[str, int], listed: int = 5) -> str:
  """Image sizes (``{'WxH': count}``, most common first) in one short line: all of them
  when there are at most ``listed``, else how many, the smallest and largest (by area)
  and the ``listed`` most common (``--json`` keeps the full list)."""
  if not counts:
    return '-'
  common = ', '.join(f'{k} ({v})' for k, v in list(counts.items())[:listed])
  if len(counts) <= listed:
    return common
  by_area = sorted(counts, key=_area)
  return (f'{len(counts)} distinct, smallest {by_area[0]}, largest {by_area[-1]}; '
          f'most common {common}')


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
    lines.append(f'sizes:     {format_sizes(report["image_sizes"])}  (width x height)')
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
