"""Tests for the Grain training/evaluation pipelines and the preview grid."""

from absl import flags
import numpy as np
import pytest

from limijax import input_pipeline as ip
from limijax.errors import UserError

ITS_ON = dict(enabled=True, prob=1.0, max_targets=2, min_size=1, max_size=3,
              min_contrast=0.2, max_contrast=0.5)


def _record(i, h=48, w=48, seed=None):
  rng = np.random.default_rng(i if seed is None else seed)
  image = rng.integers(40, 120, (h, w)).astype(np.uint8)
  mask = np.zeros((h, w), np.uint8)
  y, x = rng.integers(2, h - 3), rng.integers(2, w - 3)
  mask[y:y + 2, x:x + 2] = 1
  image[mask > 0] = 220
  return {'image': image, 'mask': mask, 'id': f'img{i}'}


def _tagged(n, size):
  """Records whose constant image value names them: record i is all 10 * (i + 1)."""
  return [{'image': np.full((size, size), 10 * (i + 1), np.uint8),
           'mask': np.zeros((size, size), np.uint8), 'id': str(i)} for i in range(n)]


def _ids(batch, mean, std):
  raw = batch['image'][:, 0, 0, 0] * std + mean
  return [int(round(v / 10)) - 1 for v in raw]


def _dihedral(a):
  out = []
  for t in (a, a.T):
    out += [t, t[::-1], t[:, ::-1], t[::-1, ::-1]]
  return out


def test_forced_crop_contains_a_target():
  image = np.full((64, 64), 50, np.uint8)
  mask = np.zeros((64, 64), np.uint8)
  mask[5, 57] = 1  # one pixel near a corner, rarely in a random 16 px crop
  hit = []
  for prob in (1.0, 0.0):
    hits = [ip.random_crop(image, mask, 16, np.random.default_rng(s),
                           crop_target_prob=prob, pad_value=0.0)[1].any()
            for s in range(50)]
    hit.append(sum(hits))
  assert hit[0] == 50
  assert hit[1] < 25


def test_small_image_is_padded_with_the_pad_value():
  image = (np.arange(20 * 12).reshape(20, 12) % 200 + 1).astype(np.uint8)
  mask = np.zeros((20, 12), np.uint8)
  mask[3, 4] = 1
  for s in range(10):
    crop, crop_mask = ip.random_crop(image, mask, 32, np.random.default_rng(s),
                                     crop_target_prob=0.5, pad_value=-7.0)
    assert crop.shape == crop_mask.shape == (32, 32)
    assert crop.dtype == np.float32 and crop_mask.dtype == np.uint8
    inside = crop != -7.0
    ys, xs = np.nonzero(inside)
    # The whole image sits, intact, in one block of the canvas.
    np.testing.assert_array_equal(
        crop[ys.min():ys.max() + 1, xs.min():xs.max() + 1], image)
    assert inside.sum() == image.size and crop_mask.sum() == 1


def test_padding_is_zero_after_normalisation():
  mean, std = 70.0, 20.0
  rec = {'image': np.full((10, 40), 200, np.uint8), 'mask': np.zeros((10, 40), np.uint8),
         'id': 'a'}
  batch = next(ip.make_train_iter([rec], image_size=32, batch_size=1, mean=mean, std=std,
                                  seed=0, its_cfg=None))
  image = batch['image'][0, :, :, 0]
  values = np.unique(image)
  np.testing.assert_allclose(sorted(values), [0.0, (200 - mean) / std], rtol=1e-6)
  assert (image != 0).sum() == 10 * 32  # 10 image rows (or columns) survive the crop


def test_flips_keep_image_and_mask_aligned_and_all_occur():
  rng0 = np.random.default_rng(0)
  image = rng0.uniform(0, 100, (16, 16)).astype(np.float32)
  mask = np.zeros((16, 16), np.uint8)
  mask[2:4, 9:14] = 1  # asymmetric, so every flip changes it
  image[mask > 0] = 255.0
  variants = set()
  for s in range(64):
    out, out_mask = ip.random_flips(image, mask, np.random.default_rng(s))
    assert out.flags['C_CONTIGUOUS'] and out_mask.flags['C_CONTIGUOUS']
    assert (out[out_mask > 0] == 255.0).all() and (out[out_mask == 0] < 255.0).all()
    matches = [k for k, d in enumerate(_dihedral(image)) if np.array_equal(out, d)]
    assert len(matches) == 1
    np.testing.assert_array_equal(out_mask, _dihedral(mask)[matches[0]])
    variants.add(matches[0])
  assert len(variants) == 8


def test_normalise_by_hand():
  out = ip.Normalise(100.0, 20.0).map({
      'image': np.array([[100, 140], [60, 0]], np.uint8),
      'mask': np.array([[0, 1], [0, 0]], np.uint8)})
  np.testing.assert_allclose(out['image'][..., 0], [[0.0, 2.0], [-2.0, -5.0]])
  np.testing.assert_array_equal(out['mask'][..., 0], [[0.0, 1.0], [0.0, 0.0]])
  assert out['image'].dtype == out['mask'].dtype == np.float32
  assert out['image'].shape == (2, 2, 1)


def test_batch_shapes_dtypes_and_values():
  src = [_record(i) for i in range(6)]
  mean, std = 80.0, 30.0
  it = ip.make_train_iter(src, image_size=32, batch_size=3, mean=mean, std=std, seed=1,
                          its_cfg=ITS_ON, crop_target_prob=1.0)
  batch = next(it)
  assert set(batch) == {'image', 'mask'}
  for k in ('image', 'mask'):
    assert batch[k].shape == (3, 32, 32, 1) and batch[k].dtype == np.float32
  assert set(np.unique(batch['mask'])) <= {0.0, 1.0}
  raw = batch['image'] * std + mean
  assert raw.min() >= -1e-3 and raw.max() <= 255 + 1e-3
  # crop_target_prob=1 keeps the real target; ITS (prob 1) adds at least one more.
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  for m in batch['mask'][..., 0]:
    assert ndimage.label(m)[1] >= 2


def test_full_size_crop_without_its_is_a_flipped_copy():
  rec = _record(3, 32, 32)
  batch = next(ip.make_train_iter([rec], image_size=32, batch_size=1, mean=90.0, std=30.0,
                                  seed=4, its_cfg=dict(ITS_ON, enabled=False)))
  raw = batch['image'][0, :, :, 0] * 30.0 + 90.0
  options = _dihedral(rec['image'].astype(np.float32))
  k = int(np.argmin([np.abs(raw - d).max() for d in options]))
  np.testing.assert_allclose(raw, options[k], atol=1e-4)
  np.testing.assert_array_equal(batch['mask'][0, :, :, 0], _dihedral(rec['mask'])[k])


def test_epochs_reshuffled_deterministic_per_seed_and_drop_remainder():
  mean, std = 0.0, 1.0
  src = _tagged(7, 16)
  assert ip.steps_per_epoch(7, 2) == 3

  def order(seed, epochs=3):
    it = ip.make_train_iter(src, image_size=16, batch_size=2, mean=mean, std=std,
                            seed=seed, its_cfg=None)
    return [sum((_ids(next(it), mean, std) for _ in range(3)), []) for _ in range(epochs)]

  a, b, c = order(0), order(0), order(1)
  assert a == b
  assert a != c
  for epoch in a:
    # 3 batches of 2 per epoch: six different records, the seventh dropped.
    assert len(set(epoch)) == 6 and set(epoch) <= set(range(7))
  assert a[0] != a[1] and a[1] != a[2]


def test_state_round_trip_in_process():
  src = [_record(i) for i in range(5)]
  kw = dict(image_size=32, batch_size=2, mean=80.0, std=30.0, seed=3, its_cfg=ITS_ON)
  it = ip.make_train_iter(src, **kw)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]  # crosses into the next epoch
  resumed = ip.make_train_iter(src, **kw)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_worker_processes_match_in_process_and_resume():
  flags.FLAGS.mark_as_parsed()
  src = [_record(i) for i in range(5)]
  kw = dict(image_size=32, batch_size=2, mean=80.0, std=30.0, seed=3, its_cfg=ITS_ON)
  ref = ip.make_train_iter(src, **kw)
  expected = [next(ref) for _ in range(6)]
  it = ip.make_train_iter(src, num_workers=2, **kw)
  try:
    for want in expected[:2]:
      np.testing.assert_array_equal(next(it)['image'], want['image'])
    state = it.get_state()
  finally:
    it.close()
  resumed = ip.make_train_iter(src, num_workers=2, **kw)
  try:
    resumed.set_state(state)
    for want in expected[2:]:
      got = next(resumed)
      np.testing.assert_array_equal(got['image'], want['image'])
      np.testing.assert_array_equal(got['mask'], want['mask'])
  finally:
    resumed.close()


def test_batch_larger_than_dataset_is_a_user_error():
  with pytest.raises(UserError, match='batch_size'):
    ip.make_train_iter(_tagged(3, 16), image_size=16, batch_size=4, mean=0.0, std=1.0,
                       seed=0, its_cfg=None)


def test_eval_pads_to_multiple_and_crops_back():
  mean, std = 90.0, 30.0
  recs = [_record(0, 37, 50), _record(1, 32, 48)]
  examples = list(ip.eval_examples(recs, mean=mean, std=std))
  assert len(examples) == 2
  ex = examples[0]
  assert ex['image'].shape == (1, 48, 64, 1) and ex['image'].dtype == np.float32
  assert ex['size'] == (37, 50) and ex['id'] == 'img0'
  assert ex['mask'].dtype == np.bool_ and ex['mask'].shape == (37, 50)
  np.testing.assert_array_equal(ex['mask'], recs[0]['mask'] > 0)
  expected = (recs[0]['image'].astype(np.float32) - mean) / std
  np.testing.assert_allclose(ex['image'][0, :37, :50, 0], expected, rtol=1e-6)
  assert (ex['image'][0, 37:] == 0).all() and (ex['image'][0, :, 50:] == 0).all()
  np.testing.assert_allclose(ip.crop_to_size(ex['image'], ex['size'])[0, ..., 0], expected,
                             rtol=1e-6)
  assert ip.crop_to_size(ex['image'][0, ..., 0], ex['size']).shape == (37, 50)
  assert examples[1]['image'].shape == (1, 32, 48, 1)  # already a multiple: no padding


def test_preview_png_is_written(tmp_path):
  path = tmp_path / 'preview.png'
  ip.save_preview([_record(i) for i in range(5)], path, image_size=32, mean=80.0,
                  std=30.0, seed=0, its_cfg=ITS_ON, n=4)
  data = path.read_bytes()
  assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 2000
