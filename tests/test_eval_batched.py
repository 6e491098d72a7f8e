"""Evaluation in batches of one padded shape equals scoring the images one at a time."""

import jax
import numpy as np
import pytest

from limijax import metrics as metrics_lib
from limijax import model as model_lib
from limijax.defaults import base_config
from limijax import workdir as workdir_lib
from limijax import evaluation


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
  def predict(params, model_state, image, valid_hw=None, valid_masks=None):
    del model_state, valid_hw, valid_masks  # each pixel on its own: no size matters
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
  got = evaluation.evaluate_source(predict, {'t': np.float32(t)}, {}, recs, mean, std,
                              progress=False, batch_size=batch_size)
  want = _one_at_a_time(recs, mean, std, t)
  assert got == want  # exact: per-image sums are added in the images' order
  assert got['num_images'] == len(SIZES)
  assert 0 < want['pd'] < 1 and want['miou'] > 0  # the set is not trivial
  assert want['num_false_alarm_components'] > 0
  # Compilations: one per padded shape (3 shapes, no more than evaluation.EVAL_SHAPES). With
  # batch 2 the (32, 48) group of 5 runs as 2 + 2 + (1 and a copy), the (48, 32) group of
  # 3 as 2 + (1 and a copy); with batch 16 every group is smaller than a batch and runs at
  # batch 1.
  assert predict._cache_size() == 3


# 8 padded shapes: (16, 16), (16, 32), (32, 16), (32, 32), (48, 16), (16, 64), (64, 48),
# (80, 80).
MANY_SIZES = [(10, 12), (16, 30), (31, 9), (20, 20), (40, 16), (16, 50), (60, 40), (70, 75),
              (12, 14), (32, 32)]


@pytest.mark.parametrize('max_shapes', [1, 2, 4])
def test_many_sizes_compile_at_most_max_shapes_and_score_as_one_at_a_time(max_shapes):
  recs = _records(MANY_SIZES, seed=2)
  mean, std, t = 60.0, 40.0, 3.5
  predict = _threshold_model()
  got = evaluation.evaluate_source(predict, {'t': np.float32(t)}, {}, recs, mean, std,
                              progress=False, batch_size=3, max_shapes=max_shapes)
  assert got == _one_at_a_time(recs, mean, std, t)
  assert predict._cache_size() == max_shapes  # 8 sizes, grouped into max_shapes shapes


def test_shape_buckets_merge_what_adds_the_fewest_padded_pixels():
  counts = {(16, 16): 4, (16, 32): 1, (32, 16): 1, (64, 64): 2}
  # Worked by hand. First merge: (16, 16) x4 with (16, 32) x1 -> (16, 32) x5 adds
  # 5 * 512 - 4 * 256 - 512 = 1024 pixels; (16, 16) with (32, 16) and (16, 32) with
  # (32, 16) also add 1024 (the first of the tied pairs in size order is taken); anything
  # with (64, 64) adds at least 3584.
  assert evaluation.shape_buckets(counts, 3) == {(16, 16): (16, 32), (16, 32): (16, 32),
                                            (32, 16): (32, 16), (64, 64): (64, 64)}
  # Second merge: (32, 16) x1 into (16, 32) x5 -> (32, 32) x6 adds 6144 - 512 - 2560 = 3072,
  # less than (32, 16) with (64, 64) (3584) or (16, 32) x5 with (64, 64) (17920).
  assert evaluation.shape_buckets(counts, 2) == {(16, 16): (32, 32), (16, 32): (32, 32),
                                            (32, 16): (32, 32), (64, 64): (64, 64)}
  assert set(evaluation.shape_buckets(counts, 1).values()) == {(64, 64)}
  assert evaluation.shape_buckets(counts, 4) == {s: s for s in counts}
  with pytest.raises(ValueError, match='max_shapes'):
    evaluation.shape_buckets(counts, 0)


@pytest.mark.parametrize('variant', [
    {},  # the paper's model, shift form: FastUp folded (border lines at the valid edge)
    # every ablation at once, literal forms: BatchNorm stem and BatchNorm in every block
    # (model.norm), plain residual blocks, bilinear upsampler, XLA's grouped depthwise
    # convolutions (FastUp literal)
    {'stem': 'dsconv_bn', 'block': 'residual', 'upsampler': 'bilinear', 'head': 'fpn',
     'depthwise': 'grouped', 'norm': 'batch'},
])
def test_model_on_a_padded_batch_with_valid_hw_equals_each_image_alone(variant):
  config = base_config()
  for key, value in variant.items():
    config.model[key] = value
  model = model_lib.from_config(config)
  variables = dict(model_lib.init(model, jax.random.PRNGKey(1)))
  if 'batch_stats' in variables:  # a BatchNorm that shifts: values beyond the valid part
    variables['batch_stats'] = jax.tree.map(lambda a: a + 0.3, variables['batch_stats'])
  rng = np.random.default_rng(0)
  sizes = [(16, 32), (32, 16), (16, 16)]
  images = [rng.standard_normal((h, w)).astype(np.float32) for h, w in sizes]
  batch = np.full((len(sizes), 32, 48, 1), 5.0, np.float32)  # junk beyond each image
  for i, image in enumerate(images):
    batch[i, :image.shape[0], :image.shape[1], 0] = image
  predict = evaluation.make_predict(model)
  params, model_state = workdir_lib.split_variables(variables)
  valid_hw = np.array(sizes, np.int32)
  out = np.asarray(predict(params, model_state, batch, valid_hw))
  given = np.asarray(predict(params, model_state, batch, valid_hw,
                             model_lib.valid_masks(valid_hw, 32, 48)))
  np.testing.assert_allclose(given, out, atol=3e-5, rtol=0)  # the masks made on the host
  for i, image in enumerate(images):
    alone = np.asarray(predict(params, model_state, image[None, :, :, None]))[0]
    h, w = image.shape
    np.testing.assert_allclose(out[i, :h, :w], alone, atol=3e-5, rtol=0)
    assert np.abs(alone).max() > 0.1  # not trivially equal
  with pytest.raises(ValueError, match='inference only'):
    model.apply(variables, batch, train=True, valid_hw=np.array(sizes, np.int32))


def test_batched_evaluation_of_the_model_matches_batch_1():
  config = base_config()
  model = model_lib.from_config(config)
  variables = model_lib.init(model, jax.random.PRNGKey(3))  # jitted: op by op is slow
  params, model_state = workdir_lib.split_variables(variables)
  recs = _records([(32, 32), (30, 28), (32, 32), (20, 31), (32, 32)], seed=1)
  predict = evaluation.make_predict(model)
  one = evaluation.evaluate_source(predict, params, model_state, recs, 60.0, 40.0,
                              progress=False, batch_size=1)
  three = evaluation.evaluate_source(predict, params, model_state, recs, 60.0, 40.0,
                                progress=False, batch_size=3)
  for key in one:
    assert one[key] == pytest.approx(three[key], abs=1e-6), key


class _CountingSource:
  """A record source (``len`` and ``[i]``) that counts its reads."""

  def __init__(self, records):
    self.records, self.reads = records, 0

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    self.reads += 1
    return self.records[i]


def test_sizes_of_a_source_are_read_once_and_kept_for_the_next_evaluation():
  recs = _records(MANY_SIZES, seed=3)
  source = _CountingSource(recs)
  predict = _threshold_model()
  args = (predict, {'t': np.float32(3.5)}, {}, source, 60.0, 40.0)
  first = evaluation.evaluate_source(*args, progress=False)
  assert source.reads == 2 * len(recs)  # the sizes, then the images
  second = evaluation.evaluate_source(*args, progress=False)
  assert source.reads == 3 * len(recs)  # the images only
  assert first == second == _one_at_a_time(recs, 60.0, 40.0, 3.5)


def test_inference_runs_a_cpu_batch_in_groups_of_up_to_infer_chunk_images():
  assert evaluation.INFER_CHUNK == 4
  assert [evaluation.infer_chunk(n, 'cpu') for n in (1, 3, 4, 7, 10, 16)] == [1, 3, 4, 1, 2, 4]
  assert evaluation.infer_chunk(16, 'gpu') == 16  # a GPU runs the whole batch
  model = model_lib.from_config(base_config())
  variables = model_lib.init(model, jax.random.PRNGKey(2))
  params, model_state = workdir_lib.split_variables(variables)
  predict = evaluation.new_predict(model)
  whole = jax.jit(lambda x, hw=None, masks=None: model.apply(variables, x, valid_hw=hw,
                                                             valid_masks=masks))
  rng = np.random.default_rng(4)
  for n in (10, 3):  # 5 groups of 2, one after another; 3 images at once
    x = rng.standard_normal((n, 32, 48, 1)).astype(np.float32)
    assert ('scan' in str(jax.make_jaxpr(predict)(params, model_state, x))) == (n == 10)
    out = np.asarray(predict(params, model_state, x))
    np.testing.assert_allclose(out, whole(x), atol=1e-5, rtol=0)
    assert np.abs(out).max() > 0.1  # not trivially equal
    # With each image's own size (a padded batch), as evaluation runs it.
    hw = np.array([(32 - 16 * (i % 2), 48 - 16 * (i % 3)) for i in range(n)], np.int32)
    masks = model_lib.valid_masks(hw, 32, 48)
    np.testing.assert_allclose(predict(params, model_state, x, hw, masks),
                               whole(x, hw, masks), atol=1e-5, rtol=0)


def test_split_logits_keeps_each_images_logits_and_scores_what_evaluate_scores(tiny_run):
  from limijax import metrics  # pylint: disable=g-import-not-at-top
  workdir, results = tiny_run
  records, result = evaluation.split_logits(workdir, 'test')
  assert result == results['test']
  assert len(records) == result['num_images']
  assert len({r['id'] for r in records}) == len(records)
  for r in records:
    assert r['logits'].dtype == np.float32 and r['logits'].shape == r['mask'].shape
    assert r['image'].shape == r['mask'].shape and r['image'].dtype == np.uint8
  # Thresholded at 0, the kept logits score the split's METRICS again.
  again = metrics.score([r['logits'] > 0 for r in records], [r['mask'] for r in records])
  assert again == result
