"""Train / validation / test splits of a dataset's ids, and the normalisation.

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
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from limijax.errors import UserError

SPLITS = ('standard', 'random')  # the values data.split and --split accept


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
