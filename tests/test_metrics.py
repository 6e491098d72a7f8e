"""Golden tests of the IRSTD metrics; every expected number is worked out by hand."""

import numpy as np
import pytest
from skimage import measure

from limijax import metrics


def _mask(shape, pixels):
  """A bool mask of ``shape`` with the given (row, col) pixels set."""
  m = np.zeros(shape, dtype=bool)
  for r, c in pixels:
    m[r, c] = True
  return m


def _square(shape, top, left, side):
  m = np.zeros(shape, dtype=bool)
  m[top:top + side, left:left + side] = True
  return m


def test_false_alarm_with_same_area_as_matched_target_still_counts():
  # gt: one 2x2 target. pred: the same 2x2 (match) plus another 2x2 far away.
  # Both predicted components have area 4; a filter by area would drop both.
  gt = _square((10, 10), 1, 1, 2)
  pred = gt | _square((10, 10), 6, 6, 2)
  r = metrics.score([pred], [gt])
  assert r['num_targets'] == 1
  assert r['pd'] == 1.0
  assert r['num_false_alarm_components'] == 1
  assert r['num_false_alarm_pixels'] == 4
  # fa = 4 / (10 * 10) = 0.04; fa_e6 = 0.04 * 1e6 = 40000
  assert r['fa'] == pytest.approx(0.04)
  assert r['fa_e6'] == pytest.approx(40000.0)
  # IoU: I = 4, U = 8 -> 0.5
  assert r['miou'] == pytest.approx(0.5)


def test_diagonal_pixels_form_one_component():
  # A diagonal streak (2,2),(3,3),(4,4) is one target under 8-connectivity
  # (4-connectivity would count 3). Its centroid is (3, 3).
  gt = _mask((8, 8), [(2, 2), (3, 3), (4, 4)])
  pred = _mask((8, 8), [(3, 3)]) | _mask((8, 8), [(5, 7), (6, 6), (7, 5)])
  r = metrics.score([pred], [gt])
  assert r['num_targets'] == 1
  # pred (3,3) sits on the target's centroid: match. The anti-diagonal
  # streak (5,7),(6,6),(7,5) is one false alarm of 3 pixels, centroid (6, 6),
  # distance sqrt(3^2 + 3^2) = 4.24 >= 3 from the target.
  assert r['pd'] == 1.0
  assert r['num_false_alarm_components'] == 1
  assert r['num_false_alarm_pixels'] == 3
  assert r['fa'] == pytest.approx(3 / 64)


def test_centroid_at_2_9_matches_but_exactly_3_does_not():
  shape = (12, 12)
  gt = _mask(shape, [(2, 5)])  # centroid (2, 5)
  # Nine pixels in row 5 (cols 1..9) and one at (4, 5), 8-connected to (5, 5):
  # centroid row = (9 * 5 + 4) / 10 = 4.9, col = (1 + ... + 9 + 5) / 10 = 50 / 10 = 5.
  # Distance to (2, 5) = 4.9 - 2 = 2.9 < 3: match.
  near = _mask(shape, [(5, c) for c in range(1, 10)] + [(4, 5)])
  r = metrics.score([near], [gt])
  assert r['pd'] == 1.0
  assert r['num_false_alarm_pixels'] == 0
  # A single pixel at (5, 5): distance exactly 5 - 2 = 3.0, not < 3: no match,
  # and its 1 pixel is a false alarm: fa = 1 / 144.
  at3 = _mask(shape, [(5, 5)])
  r = metrics.score([at3], [gt])
  assert r['pd'] == 0.0
  assert r['num_false_alarm_pixels'] == 1
  assert r['fa'] == pytest.approx(1 / 144)
  # The same pixel matches once the threshold is raised past 3.
  assert metrics.score([at3], [gt], distance_threshold=3.5)['pd'] == 1.0


def test_label_order_not_nearest_decides_the_match():
  shape = (8, 8)
  gt = _mask(shape, [(4, 4)])
  # P1 = (2, 4): label 1 (earlier in raster order), distance 2.
  # P2 = (4, 5),(4, 6): label 2, centroid (4, 5.5), distance 1.5 (nearer).
  # The reference takes the first free component in label order: P1 matches and
  # P2's 2 pixels are false alarms (a nearest rule would leave 1 pixel).
  pred = _mask(shape, [(2, 4), (4, 5), (4, 6)])
  r = metrics.score([pred], [gt])
  assert r['pd'] == 1.0
  assert r['num_false_alarm_components'] == 1
  assert r['num_false_alarm_pixels'] == 2


def test_one_predicted_component_matches_only_one_target():
  shape = (10, 10)
  # Two one-pixel targets, (5, 4) and (5, 6), separate (column 5 between them is empty).
  gt = _mask(shape, [(5, 4), (5, 6)])
  # One predicted pixel at (5, 5), distance 1 from both: it can match only the first.
  pred = _mask(shape, [(5, 5)])
  r = metrics.score([pred], [gt])
  assert r['num_targets'] == 2
  assert r['num_matched_targets'] == 1
  assert r['pd'] == 0.5  # 1 / 2
  assert r['num_false_alarm_pixels'] == 0


def test_non_square_images():
  # H = 3, W = 8: a pixel count of 24, and (row, col) indices beyond H are valid.
  gt = _mask((3, 8), [(1, 6)])
  pred = _mask((3, 8), [(1, 6), (1, 1)])
  r = metrics.score([pred], [gt])
  assert r['num_pixels'] == 24
  assert r['pd'] == 1.0
  assert r['fa'] == pytest.approx(1 / 24)  # one false-alarm pixel of 3 x 8
  # IoU: I = 1, U = 2
  assert r['miou'] == pytest.approx(0.5)
  with pytest.raises(ValueError, match='shape'):
    metrics.MetricAccumulator().update(np.zeros((3, 8), bool), np.zeros((8, 3), bool))


def test_miou_is_accumulated_over_the_set_not_averaged():
  shape = (6, 6)
  # Image 1: pred == gt, a 2x2 square: I = 4, U = 4, IoU = 1.
  g1 = _square(shape, 0, 0, 2)
  # Image 2: gt rows 0-1 cols 0-1, pred shifted one column (cols 1-2):
  # I = 2 (column 1), U = 4 + 4 - 2 = 6, IoU = 1/3.
  g2 = _square(shape, 0, 0, 2)
  p2 = _square(shape, 0, 1, 2)
  r = metrics.score([g1, p2], [g1, g2])
  # Set-level: (4 + 2) / (4 + 6) = 0.6; the mean of per-image IoU would be
  # (1 + 1/3) / 2 = 2/3, which is what nIoU reports.
  assert r['miou'] == pytest.approx(0.6)
  assert r['niou'] == pytest.approx(2 / 3)
  assert r['miou'] != pytest.approx(r['niou'])


def test_pd_and_fa_are_summed_over_the_set():
  # Image 1 (4x4, 16 px): two targets (0,0) and (3,3), only the first found,
  # plus one false-alarm pixel at (0,3).
  g1 = _mask((4, 4), [(0, 0), (3, 3)])
  p1 = _mask((4, 4), [(0, 0), (0, 3)])
  # Image 2 (3x8, 24 px): one target (1,1) found, three false-alarm pixels in
  # one component at (0,6),(1,6),(2,6) (centroid (1,6), distance 5 from (1,1)).
  g2 = _mask((3, 8), [(1, 1)])
  p2 = _mask((3, 8), [(1, 1), (0, 6), (1, 6), (2, 6)])
  r = metrics.score([p1, p2], [g1, g2])
  # Pd = (1 + 1) / (2 + 1) = 2/3, not the per-image mean (1/2 + 1) / 2 = 3/4.
  assert r['num_targets'] == 3
  assert r['pd'] == pytest.approx(2 / 3)
  # Fa = (1 + 3) / (16 + 24) = 0.1, not (1/16 + 3/24) / 2 = 0.09375.
  assert r['num_pixels'] == 40
  assert r['fa'] == pytest.approx(0.1)
  assert r['fa_e6'] == pytest.approx(1e5)


def test_niou_scores_an_empty_image_zero():
  shape = (5, 5)
  target = _square(shape, 1, 1, 2)
  empty = np.zeros(shape, dtype=bool)
  r = metrics.score([target, empty], [target, empty])
  # Image 1 IoU = 4 / 4 = 1 (to within eps); image 2 has no target and no
  # prediction: 0 / (0 + eps) = 0, as in the reference code. nIoU = (1 + 0) / 2.
  assert r['niou'] == pytest.approx(0.5)
  # Over non-empty images only: 1 / 1.
  assert r['niou_nonempty'] == pytest.approx(1.0)
  # The empty image adds nothing to the set's sums: mIoU = 4 / 4, Pd = 1 / 1.
  assert r['miou'] == pytest.approx(1.0)
  assert r['pd'] == 1.0
  assert r['num_images'] == 2


def test_set_without_targets_or_predictions_reports_zeros():
  r = metrics.score([np.zeros((4, 4), bool)], [np.zeros((4, 4), bool)])
  # Empty union and no targets: miou and pd are defined as 0.0, fa = 0 / 16.
  assert r == {
      'miou': 0.0, 'niou': 0.0, 'niou_nonempty': 0.0, 'pd': 0.0, 'fa': 0.0,
      'fa_e6': 0.0, 'num_images': 1, 'num_targets': 0, 'num_matched_targets': 0,
      'num_false_alarm_components': 0, 'num_false_alarm_pixels': 0, 'num_pixels': 16}
  assert metrics.MetricAccumulator().result()['num_images'] == 0


def test_logits_are_thresholded_at_zero():
  logits = np.array([[-1.0, 0.0, 0.3, 2.0]])
  # logit 0.3 is probability sigmoid(0.3) = 0.574 > 0.5: a target; logit 0 is not.
  np.testing.assert_array_equal(metrics.binarize_logits(logits),
                                [[False, False, True, True]])
  # Probabilities: strictly above the threshold.
  np.testing.assert_array_equal(metrics.binarize_probabilities([0.49, 0.5, 0.51]),
                                [False, False, True])
  np.testing.assert_array_equal(metrics.binarize_probabilities([0.6, 0.8], 0.7),
                                [False, True])
  # End to end: a target whose logit is only 0.3 is found (thresholding the logit
  # at 0.5 would miss it and give Pd 0).
  gt = _mask((4, 4), [(1, 1)])
  logit_map = np.full((4, 4), -5.0)
  logit_map[1, 1] = 0.3
  assert metrics.score([metrics.binarize_logits(logit_map)], [gt])['pd'] == 1.0


def test_anti_aliased_masks_are_binarised_above_127():
  np.testing.assert_array_equal(
      metrics.binarize_mask(np.array([0, 1, 127, 128, 200, 255], np.uint8)),
      [False, False, False, True, True, True])
  # An anti-aliased blob: 255 centre, 128 edges, 60 corners -> a plus of 5 pixels.
  blob = np.array([[60, 128, 60], [128, 255, 128], [60, 128, 60]], np.uint8)
  assert metrics.binarize_mask(blob).sum() == 5
  # A bool or a [0, 1] float mask would come out empty; refuse it instead.
  with pytest.raises(ValueError, match='8-bit'):
    metrics.binarize_mask(np.ones((2, 2), bool))
  with pytest.raises(ValueError, match='8-bit'):
    metrics.binarize_mask(np.ones((2, 2), np.float32))


def test_update_refuses_non_bool_and_accepts_a_channel_axis():
  acc = metrics.MetricAccumulator()
  with pytest.raises(ValueError, match='bool'):
    acc.update(np.full((4, 4), 0.9), np.zeros((4, 4), bool))
  with pytest.raises(ValueError, match=r'\(H, W\)'):
    acc.update(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4), bool))
  m = _mask((4, 4), [(2, 2)])
  acc.update(m[..., None], m[..., None])  # (H, W, 1) as a data pipeline yields it
  assert acc.result()['pd'] == 1.0
  assert acc.result()['num_pixels'] == 16
  with pytest.raises(ValueError):
    metrics.score([m, m], [m])  # unequal numbers of predictions and masks


def _random_pairs(n, seed):
  rng = np.random.default_rng(seed)
  pairs = []
  for _ in range(n):
    h, w = rng.integers(8, 24, size=2)
    gt = rng.random((h, w)) < 0.05
    # Predictions: the targets jittered by up to one pixel, plus sparse noise.
    pred = np.roll(gt, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
    pred |= rng.random((h, w)) < 0.03
    pairs.append((pred, gt))
  return pairs


def test_merge_equals_single_accumulation():
  pairs = _random_pairs(12, seed=0)
  whole = metrics.MetricAccumulator()
  for p, g in pairs:
    whole.update(p, g)
  shard_a, shard_b = metrics.MetricAccumulator(), metrics.MetricAccumulator()
  for p, g in pairs[:5]:
    shard_a.update(p, g)
  for p, g in pairs[5:]:
    shard_b.update(p, g)
  shard_a.merge(shard_b)
  expected, merged = whole.result(), shard_a.result()
  assert merged.keys() == expected.keys()
  for key, value in expected.items():
    if isinstance(value, int):
      assert merged[key] == value, key  # counts are exact
    else:
      assert merged[key] == pytest.approx(value, rel=1e-12), key
  assert expected['num_targets'] > 0 and expected['num_false_alarm_pixels'] > 0
  with pytest.raises(ValueError, match='threshold'):
    shard_a.merge(metrics.MetricAccumulator(distance_threshold=2.0))


def _reference_pd_fa(pred, gt):
  """The field's matching procedure restated independently, with skimage's regionprops."""
  pred_regions = list(measure.regionprops(measure.label(pred, connectivity=2)))
  gt_regions = measure.regionprops(measure.label(gt, connectivity=2))
  matched_pixels = np.zeros(pred.shape, dtype=bool)
  hits = 0
  for g in gt_regions:
    for k, p in enumerate(pred_regions):
      if np.linalg.norm(np.array(p.centroid) - np.array(g.centroid)) < 3:
        hits += 1
        matched_pixels[p.coords[:, 0], p.coords[:, 1]] = True
        del pred_regions[k]
        break
  return len(gt_regions), hits, int(pred.sum() - matched_pixels.sum())


def test_agrees_with_an_independent_regionprops_version():
  pairs = _random_pairs(40, seed=1)
  targets = hits = fa_pixels = 0
  for pred, gt in pairs:
    t, h, f = _reference_pd_fa(pred, gt)
    targets, hits, fa_pixels = targets + t, hits + h, fa_pixels + f
  r = metrics.score(*zip(*pairs))
  assert (r['num_targets'], r['num_matched_targets'], r['num_false_alarm_pixels']) == (
      targets, hits, fa_pixels)
  assert 0 < hits < targets  # the random set exercises both hits and misses
