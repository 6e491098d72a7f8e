"""The C2F loss (paper eq. 1-4) against numbers worked out by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from limijax import losses

LN2 = math.log(2.0)
LOG_075 = math.log(0.75)  # sigma(ln 3) = 3 / (1 + 3) = 0.75
LOGITS = jnp.array([0.0, math.log(3.0)])  # probabilities 0.5 and 0.75
Y = jnp.array([0.0, 1.0])


def test_smoothed_label_is_eq1():
  for alpha in (0.0, 0.1, 0.001):
    for y in (0.0, 1.0):
      expected = alpha ** (1 - y) * (1 - alpha) ** y
      assert float(losses.smooth_labels(jnp.array(y), alpha)) == pytest.approx(expected)


def test_soft_bce_without_smoothing_by_hand():
  # pixel 0: y=0, p=0.5 -> -ln(0.5) = ln 2 = 0.693147
  # pixel 1: y=1, p=0.75 -> -ln(0.75) = 0.287682; mean = 0.490415
  expected = (LN2 - LOG_075) / 2
  assert expected == pytest.approx(0.490415, abs=1e-6)
  assert float(losses.soft_bce(LOGITS, Y, 0.0)) == pytest.approx(expected, rel=1e-6)


def test_soft_bce_with_alpha_by_hand():
  # alpha = 0.1: targets become 0.1 (background) and 0.9 (target)
  # pixel 0: -(0.1 ln .5 + 0.9 ln .5) = ln 2 = 0.693147
  # pixel 1: -(0.9 ln .75 + 0.1 ln .25) = 0.258914 + 0.138629 = 0.397543
  # mean = 0.545345
  expected = (LN2 + (-0.9 * LOG_075 - 0.1 * math.log(0.25))) / 2
  assert expected == pytest.approx(0.545345, abs=1e-6)
  assert float(losses.soft_bce(LOGITS, Y, 0.1)) == pytest.approx(expected, rel=1e-6)


def test_dice_by_hand():
  # sum(p y) = 0.75, sum p = 1.25, sum y = 1, eps = 1:
  # 1 - (1.5 + 1) / (1.25 + 1 + 1) = 1 - 2.5 / 3.25 = 0.230769
  assert float(losses.dice(LOGITS, Y, 1.0)) == pytest.approx(1 - 2.5 / 3.25, rel=1e-6)
  # eps -> 0: 1 - 1.5 / 2.25 = 1/3
  assert float(losses.dice(LOGITS, Y, 1e-9)) == pytest.approx(1 / 3, rel=1e-6)


def test_c2f_total_by_hand():
  # Every scale sees the same logits here, so each term is
  # w_s (0.6 bce(alpha_s) + 0.4 dice) with w_s = 2000 ** -alpha_s.
  dice = 1 - 2.5 / 3.25

  def bce(a):  # mean over the two pixels, smoothed targets a and 1 - a
    return (LN2 + (-(1 - a) * LOG_075 - a * math.log(0.25))) / 2

  alphas = (0.1, 0.05, 0.01, 0.001)
  expected = 0.6 * bce(0.0) + 0.4 * dice  # final output, alpha 0, weight 1
  expected += sum(2000 ** -a * (0.6 * bce(a) + 0.4 * dice) for a in alphas)
  total, terms = losses.c2f_loss(LOGITS, [LOGITS] * 4, Y, side_alphas=alphas)
  assert float(total) == pytest.approx(expected, rel=1e-6)
  assert set(terms) == {'final', 'side0', 'side1', 'side2', 'side3'}
  # w for alpha 0.1 is 2000^-0.1 = exp(-0.1 ln 2000) = 0.467799
  assert float(terms['side0']) == pytest.approx(0.467624 * (0.6 * bce(0.1) + 0.4 * dice), rel=1e-5)


def test_fpn_head_has_final_term_only():
  total, terms = losses.c2f_loss(LOGITS, (), Y)
  assert set(terms) == {'final'}
  assert float(total) == pytest.approx(0.6 * (LN2 - LOG_075) / 2 + 0.4 * (1 - 2.5 / 3.25), rel=1e-6)


def test_wrong_number_of_sides_is_refused():
  with pytest.raises(ValueError, match='side alphas'):
    losses.c2f_loss(LOGITS, [LOGITS] * 3, Y)


def test_stable_for_huge_logits():
  logits = jnp.array([-1e4, 1e4, 1e4, -1e4])
  y = jnp.array([0.0, 1.0, 0.0, 1.0])
  value, grad = jax.value_and_grad(lambda z: losses.c2f_loss(z, [z] * 4, y)[0])(logits)
  assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(grad)))
  # two pixels wrong by 1e4: BCE of each is 1e4, mean over 4 pixels = 5000
  assert float(losses.soft_bce(logits, y)) == pytest.approx(5000.0, rel=1e-6)
  # perfectly confident and right: BCE ~ 0 without smoothing
  assert float(losses.soft_bce(jnp.array([-1e4, 1e4]), jnp.array([0.0, 1.0]))) == pytest.approx(0.0, abs=1e-6)


def test_smoothing_pulls_optimum_away_from_certainty():
  # With alpha, the BCE minimum for a background pixel is at sigma(p) = alpha (logit ln(a/(1-a))).
  a = 0.05
  g = jax.grad(lambda z: losses.soft_bce(z, jnp.array([0.0]), a))(jnp.array([math.log(a / (1 - a))]))
  assert abs(float(g[0])) < 1e-7
