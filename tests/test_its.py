"""Tests for the Infrared Target Simulator (paper section 3.2)."""

import grain
import numpy as np
import pytest
from scipy import ndimage

from limijax import defaults
from limijax import its

CFG = dict(enabled=True, prob=1.0, max_targets=3, min_size=1, max_size=5,
           min_contrast=0.15, max_contrast=0.6)


def _noisy_background(shape=(64, 64), level=80.0, noise=4.0, seed=0):
  rng = np.random.default_rng(seed)
  return (level + rng.uniform(-noise, noise, shape)).astype(np.float32)


def _new_targets(mask_before, mask_after):
  labels, count = ndimage.label((mask_after > 0) & ~(mask_before > 0))
  return [labels == k for k in range(1, count + 1)]


def test_pseudo_targets_are_in_mask_and_brighter_than_surroundings():
  image = _noisy_background()
  mask = np.zeros(image.shape, np.uint8)
  seen = 0
  for seed in range(20):
    out, out_mask = its.add_pseudo_targets(image, mask, np.random.default_rng(seed), CFG)
    assert out.dtype == np.float32 and out_mask.dtype == np.uint8
    assert set(np.unique(out_mask)) <= {0, 1}
    targets = _new_targets(mask, out_mask)
    assert 1 <= len(targets) <= CFG['max_targets']
    # Pixels outside the new targets are untouched.
    support = out_mask > 0
    np.testing.assert_array_equal(out[~support], image[~support])
    for t in targets:
      seen += 1
      ring = ndimage.binary_dilation(t, iterations=3) & ~support
      # Peak at least min_contrast * 255 above the surroundings (noise is +-4 grey).
      assert out[t].max() - out[ring].mean() >= CFG['min_contrast'] * 255 - 8
      assert out[t].mean() > out[ring].mean()
  assert seen >= 20


def test_peak_is_set_from_local_mean_and_fades_outward():
  # Constant halves, one target per image: the peak must be the side's level plus a
  # contrast in [min_contrast, max_contrast] * 255, whichever side it lands on.
  cfg = dict(CFG, max_targets=1, min_size=3, max_size=5)
  image = np.full((64, 128), 30.0, np.float32)
  image[:, 64:] = 150.0
  checked = 0
  for seed in range(40):
    out, out_mask = its.add_pseudo_targets(image, np.zeros(image.shape, np.uint8),
                                           np.random.default_rng(seed), cfg)
    (t,) = _new_targets(np.zeros_like(out_mask), out_mask)
    xs = np.nonzero(t)[1]
    if xs.max() < 64 - 20:
      level = 30.0
    elif xs.min() >= 64 + 20:
      level = 150.0
    else:
      continue  # the window straddles both halves
    peak = out[t].max()
    lo = level + cfg['min_contrast'] * 255
    hi = min(level + cfg['max_contrast'] * 255, 255.0)
    assert lo - 1e-3 <= peak <= hi + 1e-3
    # Bright centre, dimmer rim: pixels next to the brightest one outshine the rest.
    py, px = np.unravel_index(np.argmax(np.where(t, out, -1)), out.shape)
    yy, xx = np.nonzero(t)
    d = np.hypot(yy - py, xx - px)
    if (d >= 2).any():
      assert out[yy[d <= 1], xx[d <= 1]].mean() > out[yy[d >= 2], xx[d >= 2]].mean()
    checked += 1
  assert checked >= 10


def test_clipped_to_255_on_bright_background():
  image = np.full((48, 48), 240.0, np.float32)
  out, out_mask = its.add_pseudo_targets(image, np.zeros((48, 48), np.uint8),
                                         np.random.default_rng(0), CFG)
  assert out_mask.any()
  assert out.max() == 255.0


def test_real_targets_are_kept_and_not_overlapped():
  image = _noisy_background()
  mask = np.zeros(image.shape, np.uint8)
  mask[10:14, 10:14] = 1
  mask[40:42, 50:53] = 1
  image[mask > 0] = 200.0
  for seed in range(20):
    out, out_mask = its.add_pseudo_targets(image, mask, np.random.default_rng(seed), CFG)
    assert (out_mask[mask > 0] == 1).all()
    np.testing.assert_array_equal(out[mask > 0], image[mask > 0])
    near_real = ndimage.binary_dilation(mask > 0, iterations=2)
    new = (out_mask > 0) & ~(mask > 0)
    assert new.any() and not (new & near_real).any()


def test_same_seed_same_targets_other_seed_other_targets():
  image = _noisy_background()
  mask = np.zeros(image.shape, np.uint8)
  a = its.add_pseudo_targets(image, mask, np.random.default_rng(5), CFG)
  b = its.add_pseudo_targets(image, mask, np.random.default_rng(5), CFG)
  c = its.add_pseudo_targets(image, mask, np.random.default_rng(6), CFG)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize('cfg', [dict(CFG, enabled=False), dict(CFG, prob=0.0), None])
def test_disabled_or_zero_probability_changes_nothing(cfg):
  image = _noisy_background()
  mask = np.zeros(image.shape, np.uint8)
  for seed in range(10):
    out, out_mask = its.add_pseudo_targets(image, mask, np.random.default_rng(seed), cfg)
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(out_mask, mask)


def test_prob_picks_a_share_of_images():
  image = _noisy_background((32, 32))
  mask = np.zeros(image.shape, np.uint8)
  hits = sum(
      its.add_pseudo_targets(image, mask, np.random.default_rng(s), dict(CFG, prob=0.5))[1]
      .any() for s in range(200))
  assert 70 <= hits <= 130


def test_lines_are_painted_as_background_after_the_same_targets():
  # line_prob draws after the targets' draws: the same seed paints the same pseudo
  # targets with or without lines; the lines brighten the image, never the mask, and keep
  # clear of every target.
  image = _noisy_background()
  mask = np.zeros(image.shape, np.uint8)
  mask[30:33, 30:33] = 1
  painted = 0
  for seed in range(20):
    plain = its.add_pseudo_targets(image, mask, np.random.default_rng(seed), CFG)
    lined = its.add_pseudo_targets(image, mask, np.random.default_rng(seed),
                                   dict(CFG, line_prob=1.0, max_lines=1))
    np.testing.assert_array_equal(lined[1], plain[1])  # the mask: the same targets only
    changed = lined[0] != plain[0]
    assert not (changed & ndimage.binary_dilation(plain[1] > 0, iterations=2)).any()
    assert (lined[0][changed] > plain[0][changed]).all()  # brighter, never darker
    if changed.any():
      painted += 1
      # thin and long: the changed pixels span far more along one direction than across
      labels, n = ndimage.label(changed, structure=np.ones((3, 3)))
      for k in range(1, n + 1):
        rows, cols = np.nonzero(labels == k)
        extent = max(np.ptp(rows), np.ptp(cols)) + 1
        # at most 4 px across (3 px and a rim), 4 sqrt 2 along a diagonal
        assert (labels == k).sum() <= 6 * extent + 6
  assert painted >= 15  # a line fits in almost every 64x64 crop
  # lines alone (no pseudo targets picked): the mask is the input's own, unchanged
  out, out_mask = its.add_pseudo_targets(image, mask, np.random.default_rng(1),
                                         dict(CFG, prob=0.0, line_prob=1.0))
  assert out_mask is mask and (out != image).any()


def test_config_from_defaults_and_bad_values():
  cfg = its.ITSConfig.from_any(defaults.base_config().data.its)
  assert cfg.enabled and cfg.max_targets == 3 and cfg.max_contrast == 0.6
  with pytest.raises(ValueError, match='min_size'):
    its.ITSConfig.from_any(dict(CFG, min_size=6))
  assert cfg.line_prob == 0.0  # no lines unless asked for
  for key, bad in (('line_prob', 1.5), ('max_lines', 0)):
    with pytest.raises(ValueError, match=f'data.its.{key}'):
      its.ITSConfig.from_any(dict(CFG, **{key: bad}))


def test_grain_random_map_is_deterministic_per_seed_epoch_and_index():
  records = [{'image': _noisy_background((32, 32), seed=i),
              'mask': np.zeros((32, 32), np.uint8), 'id': str(i)} for i in range(3)]

  def dataset(seed):
    # repeat() hands the global index epoch * n + i to the transform's generator.
    return grain.MapDataset.source(records).random_map(its.ITS(CFG), seed=seed).repeat(2)

  first, again, other = dataset(1), dataset(1), dataset(2)
  for i in range(6):
    np.testing.assert_array_equal(first[i]['image'], again[i]['image'])
    np.testing.assert_array_equal(first[i]['mask'], again[i]['mask'])
    assert first[i]['id'] == str(i % 3)
  for i in range(3):
    # The same record in the next epoch, and under another seed, gets other targets.
    assert not np.array_equal(first[i]['mask'], first[i + 3]['mask'])
    assert not np.array_equal(first[i]['mask'], other[i]['mask'])
