"""Evaluation in batches of one padded shape equals scoring the images one at a time."""

import jax
import numpy as np
import pytest

from limijax import metrics as metrics_lib
from limijax import model as model_lib
from limijax import train
from limijax.defaults import base_config


def _records(sizes, seed=0):
  """Bright square targets on a noisy background, one record per (H, W)."""
  rng = np.random.default_rng(seed)
  recs = []
  for i, (h, w) in enumerate(sizes):
    image = rng.integers(0, 120, size=(h, w)).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for k in range(int(rng.integers(1, 4))):
      r, c = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3))
      kind = (i + k) % 3  # 0: found, 1: missed (dim), 2: false alarm (not labelled)
      image[r:r + 3, c:c + 3] = 100 if kind == 1 else 250
      if kind != 2:  # the labelled target differs a little from the bright square
        mask[r:r + 3, c:c + 2] = 255
    recs.append({'image': image, 'mask': mask, 'id': f'img{i}'})
  return recs


# 3 padded shapes: (32, 48) x 5 (two sizes), (48, 32) x 3, (16, 16) x 1.
SIZES = [(30, 40), (32, 48), (48, 20), (31, 33), (16, 16), (29, 47), (40, 32), (32, 48),
         (45, 30)]


def _threshold_model():
  """A 'model' whose logits are the normalised image minus a threshold: exact to check."""
  @jax.jit
  def predict(params, model_state, image):
    del model_state
    return image - params['t']
  return predict


def _one_at_a_time(recs, mean, std, t):
  acc = metrics_lib.MetricAccumulator()
  for rec in recs:
    norm = (rec['image'].astype(np.float32) - np.float32(mean)) / np.float32(std)
    acc.update(norm - np.float32(t) > 0, rec['mask'] > 0)
  return acc.result()


@pytest.mark.parametrize('batch_size', [1, 2, 3, 16])
def test_batched_metrics_equal_one_at_a_time(batch_size):
  recs = _records(SIZES)
  mean, std, t = 60.0, 40.0, 3.5  # (250 - 60) / 40 = 4.75 > 3.5 > (120 - 60) / 40 >= dim, noise
  predict = _threshold_model()
  got = train.evaluate_source(predict, {'t': np.float32(t)}, {}, recs, mean, std,
                              progress=False, batch_size=batch_size)
  want = _one_at_a_time(recs, mean, std, t)
  assert got == want  # exact: per-image sums are added in the images' order
  assert got['num_images'] == len(SIZES)
  assert 0 < want['pd'] < 1 and want['miou'] > 0  # the set is not trivial
  assert want['num_false_alarm_components'] > 0
  # Compilations: one per padded shape (3 shapes). With batch 2 the (32, 48) group of 5
  # runs as 2 + 2 + (1 and a copy), the (48, 32) group of 3 as 2 + (1 and a copy); with
  # batch 16 every group is smaller than a batch and runs at batch 1.
  assert predict._cache_size() == 3


def test_batched_evaluation_of_the_model_matches_batch_1():
  config = base_config()
  model = model_lib.from_config(config)
  variables = model_lib.init(model, jax.random.PRNGKey(3))  # jitted: op by op is slow
  params, model_state = train.split_variables(variables)
  recs = _records([(32, 32), (30, 28), (32, 32), (20, 31), (32, 32)], seed=1)
  predict = train.make_predict(model)
  one = train.evaluate_source(predict, params, model_state, recs, 60.0, 40.0,
                              progress=False, batch_size=1)
  three = train.evaluate_source(predict, params, model_state, recs, 60.0, 40.0,
                                progress=False, batch_size=3)
  for key in one:
    assert one[key] == pytest.approx(three[key], abs=1e-6), key
