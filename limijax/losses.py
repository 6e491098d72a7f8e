"""The coarse-to-fine loss of Limi-Net (paper eq. 1-4).

Per scale ``s``: ``w_s * (lambda_sce * SoftBCE(p, y, alpha_s) + lambda_dice * Dice(p, y))``
with ``w_s = weight_base ** -alpha_s`` (eq. 4), summed over the final output
(``alpha = 0``, weight 1) and the four C2F side outputs (``alpha`` 0.1, 0.05, 0.01, 0.001
for the x8, x4, x2 and x1 heads).

* SoftBCE (eq. 1-2): binary cross-entropy against the smoothed label
  ``y' = alpha ** (1 - y) * (1 - alpha) ** y`` - ``alpha`` for background, ``1 - alpha``
  for target - averaged over all pixels of the batch, in the log-sigmoid form so that
  large logits neither overflow nor produce ``log(0)``.
* Dice (eq. 3): ``1 - (2 sum(sigma(p) y) + eps) / (sum(sigma(p)) + sum(y) + eps)`` with the
  sums over every pixel of the batch (one Dice per batch, as eq. 3 sums over all N
  points) and the *unsmoothed* label. ``eps`` defaults to 1: an all-background batch then
  still pulls predictions towards background instead of giving a constant loss.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from limijax.errors import ConfigError


def smooth_labels(y: jax.Array, alpha: float) -> jax.Array:
  """Eq. (1) for binary ``y``: alpha where y = 0, 1 - alpha where y = 1."""
  return y * (1.0 - alpha) + (1.0 - y) * alpha


def soft_bce(logits: jax.Array, y: jax.Array, alpha: float = 0.0) -> jax.Array:
  """Eq. (2), mean over all elements; stable for any logit."""
  t = smooth_labels(y.astype(logits.dtype), alpha)
  # -(t log sigma(p) + (1 - t) log sigma(-p)), log sigma computed as -softplus(-p)
  return -jnp.mean(t * jax.nn.log_sigmoid(logits) + (1.0 - t) * jax.nn.log_sigmoid(-logits))


def dice(logits: jax.Array, y: jax.Array, eps: float = 1.0) -> jax.Array:
  """Eq. (3) over all elements of the batch."""
  p = jax.nn.sigmoid(logits)
  y = y.astype(p.dtype)
  return 1.0 - (2.0 * jnp.sum(p * y) + eps) / (jnp.sum(p) + jnp.sum(y) + eps)


def scale_loss(logits, y, alpha: float, *, lambda_sce: float = 0.6,
               lambda_dice: float = 0.4, dice_eps: float = 1.0) -> jax.Array:
  return lambda_sce * soft_bce(logits, y, alpha) + lambda_dice * dice(logits, y, dice_eps)


def c2f_loss(final: jax.Array, sides: Sequence[jax.Array], y: jax.Array, *,
             side_alphas: Sequence[float] = (0.1, 0.05, 0.01, 0.001),
             final_alpha: float = 0.0, weight_base: float = 2000.0,
             lambda_sce: float = 0.6, lambda_dice: float = 0.4,
             dice_eps: float = 1.0) -> tuple[jax.Array, dict]:
  """Eq. (4). Returns the total and each scale's weighted term (``final``, ``side0``...)."""
  if sides and len(sides) != len(side_alphas):
    raise ValueError(f'{len(sides)} side outputs but {len(side_alphas)} side alphas')
  kw = dict(lambda_sce=lambda_sce, lambda_dice=lambda_dice, dice_eps=dice_eps)
  terms = {'final': weight_base ** (-final_alpha) * scale_loss(final, y, final_alpha, **kw)}
  for i, (logits, alpha) in enumerate(zip(sides, side_alphas)):
    terms[f'side{i}'] = weight_base ** (-alpha) * scale_loss(logits, y, alpha, **kw)
  return sum(terms.values()), terms


def loss_from_config(final, sides, y, loss_cfg) -> tuple[jax.Array, dict]:
  return c2f_loss(final, sides, y, side_alphas=tuple(loss_cfg.side_alphas),
                  final_alpha=loss_cfg.final_alpha, weight_base=loss_cfg.weight_base,
                  lambda_sce=loss_cfg.lambda_sce, lambda_dice=loss_cfg.lambda_dice,
                  dice_eps=loss_cfg.dice_eps)


def check_config(loss_cfg) -> None:
  """Raise :class:`ConfigError` naming the first ``loss.*`` key out of its range.

  Label smoothing alpha is the background label (eq. 2), so it must lie in [0, 0.5):
  at 0.5 target and background become the same label.
  """
  alphas = tuple(loss_cfg.side_alphas)
  if len(alphas) != 4:
    raise ConfigError('loss.side_alphas', f'needs four values (x8, x4, x2, x1), got {alphas!r}')
  for key, values in (('loss.side_alphas', alphas), ('loss.final_alpha', (loss_cfg.final_alpha,))):
    if not all(0.0 <= a < 0.5 for a in values):
      raise ConfigError(key, f'each alpha must be in [0, 0.5), got {values!r}')
  if not loss_cfg.weight_base > 0:
    raise ConfigError('loss.weight_base', f'must be > 0, got {loss_cfg.weight_base}')
  for key in ('lambda_sce', 'lambda_dice'):
    if not loss_cfg[key] >= 0:
      raise ConfigError(f'loss.{key}', f'must be >= 0, got {loss_cfg[key]}')
  if loss_cfg.lambda_sce + loss_cfg.lambda_dice <= 0:
    raise ConfigError('loss.lambda_sce', 'loss.lambda_sce and loss.lambda_dice are both 0: '
                      'nothing would be learned')
  if not loss_cfg.dice_eps > 0:
    raise ConfigError('loss.dice_eps', f'must be > 0, got {loss_cfg.dice_eps}')
