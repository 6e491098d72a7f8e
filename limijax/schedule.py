"""The paper's learning-rate schedule and optimiser (section 4.2), step by step as PyTorch.

AdamW at ``learning_rate`` under PyTorch's ``LinearLR`` (``warmup_steps`` iterations
rising from ``warmup_start_factor`` to 1, stepped per iteration) chained with a cosine
stepped per epoch down to ``eta_min = min_learning_rate``, reproduced step by step by
:func:`lr_table`. The paper's "cosine annealing with a period of 10" has three readings
(config ``cosine``):

* ``annealing`` (the default): ``CosineAnnealingLR(T_max=cosine_period_epochs)``. Like
  PyTorch's scheduler, the cosine does not stop after its period: the rate falls to
  ``eta_min`` at epoch 10, climbs back to ``lr`` at epoch 20, and so on.
* ``restarts``: ``CosineAnnealingWarmRestarts(T_0=cosine_period_epochs)``, created before
  ``LinearLR`` (created after, it would reset the warm-up's first rate): the rate falls
  towards ``eta_min`` over each period and jumps back to ``lr`` every 10 epochs.
* ``single``: one cosine over the whole run, ``CosineAnnealingLR(T_max=num_epochs)``.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def lr_table(config, steps_per_epoch: int, num_steps: int) -> np.ndarray:
  """The learning rate of every step, exactly as PyTorch computes it for the paper's recipe.

  That recipe chains two schedulers on one optimiser: ``LinearLR(start_factor, 1,
  total_iters=warmup_steps)`` stepped after every iteration and the cosine of
  ``config.cosine`` (module docstring) stepped after every epoch. Chained, each updates
  the current rate (``LinearLR`` and ``CosineAnnealingLR`` in their recursive forms,
  ``CosineAnnealingWarmRestarts`` in its closed form), so when warm-up outlasts the first
  epoch the result is not the product of two closed forms; replaying them (in float64)
  gives PyTorch's numbers step by step.
  """
  base, eta_min = float(config.learning_rate), float(config.min_learning_rate)
  period, warm = int(config.cosine_period_epochs), int(config.warmup_steps)
  reading = config.cosine
  if reading == 'single':
    period = int(config.num_epochs)
  start = float(config.warmup_start_factor)
  lr = base * start if warm > 0 else base
  out = np.empty(num_steps, np.float64)
  for t in range(num_steps):
    out[t] = lr  # the rate this step uses
    k = t + 1  # LinearLR.step() after the optimiser step
    if warm > 0 and k <= warm:
      lr *= 1.0 + (1.0 - start) / (warm * start + (k - 1) * (1.0 - start))
    if k % steps_per_epoch == 0:  # the cosine scheduler's step() at the end of an epoch
      e = k // steps_per_epoch
      if reading == 'restarts':  # the closed form of the epoch's place in its period
        lr = eta_min + (base - eta_min) * (1 + math.cos(math.pi * (e % period) / period)) / 2
      elif (e - 1 - period) % (2 * period) == 0:
        lr += (base - eta_min) * (1 - math.cos(math.pi / period)) / 2
      else:
        lr = ((1 + math.cos(math.pi * e / period)) / (1 + math.cos(math.pi * (e - 1) / period))
              * (lr - eta_min) + eta_min)
  return out


def make_schedule(config, steps_per_epoch: int):
  """``schedule(step)``: the rate of :func:`lr_table` for a run of ``num_epochs``."""
  table = jnp.asarray(lr_table(config, steps_per_epoch, config.num_epochs * steps_per_epoch),
                      jnp.float32)

  def schedule(step):
    return table[jnp.clip(jnp.asarray(step, jnp.int32), 0, table.shape[0] - 1)]

  return schedule


# The programs of a run are cached per process by the settings they depend on: a second
# run with the same settings in one process (a test suite, a notebook, seeds run one after
# another) reuses the jitted functions, so they are neither traced nor fetched from the
# compilation cache again.
_SCHEDULE_KEYS = ('learning_rate', 'min_learning_rate', 'cosine', 'cosine_period_epochs',
                  'warmup_steps', 'warmup_start_factor', 'num_epochs', 'weight_decay')


def make_optimizer(config, steps_per_epoch: int):
  """``(tx, schedule)``: AdamW under :func:`make_schedule`; the same objects for the same
  settings within a process."""
  return _optimizer(tuple(config[k] for k in _SCHEDULE_KEYS), steps_per_epoch)


@functools.lru_cache(maxsize=16)
def _optimizer(values: tuple, steps_per_epoch: int):
  config = ml_collections.ConfigDict(dict(zip(_SCHEDULE_KEYS, values)))
  schedule = make_schedule(config, steps_per_epoch)
  # On one flat vector of all parameters (optax.flatten): the same update formula per
  # element as on the tree, as one set of operations instead of one per parameter array
  # (134 in the default model); the training step's HLO shrinks by a third. XLA fuses the
  # gradients into the flattening, so results differ from the tree form in the last bits.
  return optax.flatten(optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8,
                                   weight_decay=config.weight_decay)), schedule
