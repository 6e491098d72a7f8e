"""The synthetic dataset: reproducible from its seed, well-formed, targets as documented."""

import numpy as np
import pytest
from scipy import ndimage

from limijax import synthetic
from limijax.errors import UserError

EIGHT = np.ones((3, 3), bool)  # 8-connectivity, as the metrics count targets


@pytest.fixture(scope='module')
def scenes():
  return list(synthetic.generate(40, 128, 11))


def test_same_seed_gives_identical_bytes():
  a = list(synthetic.generate(3, 64, 5))
  b = list(synthetic.generate(3, 64, 5))
  assert [i for i, _, _ in a] == ['syn_00000', 'syn_00001', 'syn_00002']
  for (ia, xa, ma), (ib, xb, mb) in zip(a, b):
    assert ia == ib
    assert xa.tobytes() == xb.tobytes()
    assert ma.tobytes() == mb.tobytes()


def test_different_seeds_and_indices_differ():
  (_, x5, _), (_, y5, _) = synthetic.generate(2, 64, 5)
  (_, x6, _), = synthetic.generate(1, 64, 6)
  assert not np.array_equal(x5, x6)
  assert not np.array_equal(x5, y5)


def test_image_depends_only_on_seed_and_index():
  few = list(synthetic.generate(3, 64, 9))
  many = list(synthetic.generate(6, 64, 9))
  for (ia, xa, ma), (ib, xb, mb) in zip(few, many):
    assert ia == ib and np.array_equal(xa, xb) and np.array_equal(ma, mb)
  # and it can be drawn on its own, without the ones before it
  x2, m2 = synthetic.make_image(np.random.default_rng([9, 2]), 64)
  assert np.array_equal(x2, few[2][1]) and np.array_equal(m2, few[2][2])


@pytest.mark.parametrize('size', [32, 47, 96])
def test_dtype_shape_and_binary_mask(size):
  for _, image, mask in synthetic.generate(4, size, 3):
    assert image.dtype == np.uint8 and image.shape == (size, size)
    assert mask.dtype == np.uint8 and mask.shape == (size, size)
    assert set(np.unique(mask)) <= {0, 1}
    assert mask.any()
    assert image.std() > 5  # a scene, not a flat field


def test_target_count_and_extent(scenes):
  counts = []
  for _, _, mask in scenes:
    labels, n = ndimage.label(mask, EIGHT)
    counts.append(n)
    for box in ndimage.find_objects(labels):
      extent = max(box[0].stop - box[0].start, box[1].stop - box[1].start)
      assert 1 <= extent <= synthetic.MAX_EXTENT
  assert min(counts) >= 1 and max(counts) <= synthetic.MAX_TARGETS
  assert len(set(counts)) >= 3  # the count varies from image to image


def test_small_images_keep_all_targets_apart():
  for _, _, mask in synthetic.generate(10, 32, 4):
    _, n = ndimage.label(mask, EIGHT)
    assert 1 <= n <= synthetic.MAX_TARGETS


def test_targets_brighter_than_their_surroundings(scenes):
  contrasts = []
  for _, image, mask in scenes:
    labels, n = ndimage.label(mask, EIGHT)
    image = image.astype(np.float64)
    for i in range(1, n + 1):
      target = labels == i
      ring = ndimage.binary_dilation(target, iterations=4) & ~ndimage.binary_dilation(target, iterations=1)
      contrasts.append(image[target].mean() - image[ring].mean())
  contrasts = np.array(contrasts)
  assert np.mean(contrasts > 0) > 0.9
  assert np.median(contrasts) > 10  # grey levels: most targets are clearly visible
  assert np.mean(contrasts < 30) > 0.05  # ...and some are dim (one in ten by design)


def test_bad_arguments_name_the_key():
  with pytest.raises(UserError, match='data.synthetic_size'):
    next(synthetic.generate(1, 16, 0))
  with pytest.raises(UserError, match='data.num_images'):
    next(synthetic.generate(-1, 64, 0))
