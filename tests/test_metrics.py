"""Golden tests of the IRSTD metrics; every expected number is worked out by hand."""

import json

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
  # one false-alarm component in 100 pixels: 10,000 per million pixels
  assert r['fa_per_mp'] == pytest.approx(1e4)
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


def test_set_without_targets_or_predictions_reports_zeros_and_no_pd():
  r = metrics.score([np.zeros((4, 4), bool)], [np.zeros((4, 4), bool)])
  # Empty union: miou is defined as 0.0; fa = fa_pixel = 0 / 16. No target at all:
  # pd is None (JSON null), not 0.
  assert r == {
      'miou': 0.0, 'niou': 0.0, 'niou_nonempty': 0.0, 'pd': None, 'fa': 0.0,
      'fa_e6': 0.0, 'fa_pixel': 0.0, 'fa_pixel_e6': 0.0, 'fa_per_mp': 0.0, 'num_images': 1,
      'num_targets': 0, 'num_matched_targets': 0, 'num_false_alarm_components': 0,
      'num_false_alarm_pixels': 0, 'num_pred_pixels_outside_gt': 0, 'num_pixels': 16}
  assert json.dumps(r['pd']) == 'null'
  assert metrics.MetricAccumulator().result()['num_images'] == 0
  assert metrics.MetricAccumulator().result()['pd'] is None


def test_set_without_targets_but_with_false_alarms():
  # 5x5 = 25 px, no target; one predicted pixel at (2, 2): pd None, fa = 1 / 25.
  r = metrics.score([_mask((5, 5), [(2, 2)])], [np.zeros((5, 5), bool)])
  assert r['pd'] is None
  assert r['num_false_alarm_pixels'] == 1
  assert r['fa'] == pytest.approx(1 / 25)
  assert r['fa_pixel'] == pytest.approx(1 / 25)
  # Merged with a shard that has a target, the set has a Pd again: 1 matched / 1.
  acc = metrics.MetricAccumulator()
  acc.update(_mask((5, 5), [(2, 2)]), np.zeros((5, 5), bool))
  assert acc.result()['pd'] is None
  other = metrics.MetricAccumulator()
  other.update(_mask((5, 5), [(1, 1)]), _mask((5, 5), [(1, 1)]))
  acc.merge(other)
  assert acc.result()['pd'] == 1.0


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
  """The field's matching procedure restated independently, with skimage's regionprops.

  Its distances are floats, as in the reference code, so it can differ from ours only at
  a tie at exactly 3 px (see test_same_shape_shifted_exactly_3_rows_does_not_match); the
  random sets below hold none.
  """
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


# --------------------------------------------------------------------------- exact 3 px
# The target of the next tests, in a 4 x 5 image: (2,2) over the row (3,1)..(3,4), one
# 8-connected component of area a = 5, row sum R_g = 2 + 4 * 3 = 14, col sum
# C_g = 2 + 1 + 2 + 3 + 4 = 12, centroid (14/5, 12/5) = (2.8, 2.4).
_TARGET_4X5 = [(2, 2), (3, 1), (3, 2), (3, 3), (3, 4)]


def test_centroid_at_exactly_3_px_does_not_match():
  gt = _mask((4, 5), _TARGET_4X5)
  pred = _mask((4, 5), [(1, 0)])  # b = 1, R_p = 1, C_p = 0
  # Distance: (2.8 - 1, 2.4 - 0) = (1.8, 2.4); 1.8^2 + 2.4^2 = 3.24 + 5.76 = 9, exactly 3 px.
  # In integers: b R_g - a R_p = 14 - 5 = 9, b C_g - a C_p = 12 - 0 = 12,
  # 9^2 + 12^2 = 225, which is not < 9 (a b)^2 = 9 * 25 = 225: no match.
  r = metrics.score([pred], [gt])
  assert r['num_targets'] == 1
  assert r['pd'] == 0.0
  # The predicted pixel is a false alarm: fa = 1 / (4 * 5) = 0.05.
  assert r['num_false_alarm_components'] == 1
  assert r['num_false_alarm_pixels'] == 1
  assert r['fa'] == pytest.approx(0.05)
  # The rule is exact, in integers: a float distance (2.8 - 1 is 1.7999999999999998, and
  # np.linalg.norm gives 2.9999999999999996 or 3.0 depending on the machine) may call this
  # tie either way. Any threshold above 3 makes it a match.
  assert metrics.score([pred], [gt], distance_threshold=3.0001)['pd'] == 1.0


def test_same_shape_shifted_exactly_3_rows_does_not_match():
  # Target: the L (5,0),(5,1),(6,0), centroid (16/3, 1/3). Prediction: the same L three
  # rows up, (2,0),(2,1),(3,0), centroid (7/3, 1/3). The distance is exactly 3 px.
  # In integers (a = b = 3): b R_g - a R_p = 3 * 16 - 3 * 7 = 27, b C_g - a C_p = 0,
  # 27^2 = 729, not < 9 (a b)^2 = 9 * 81 = 729: no match.
  gt = _mask((8, 3), [(5, 0), (5, 1), (6, 0)])
  pred = _mask((8, 3), [(2, 0), (2, 1), (3, 0)])
  r = metrics.score([pred], [gt])
  assert r['pd'] == 0.0
  assert r['num_false_alarm_pixels'] == 3  # fa = 3 / 24
  # In floats 16/3 - 7/3 is 2.9999999999999996, so the float comparison (ours before, the
  # reference's np.linalg.norm now) calls this a hit; the independent regionprops version
  # at the bottom of this file agrees with the float answer.
  assert 16 / 3 - 7 / 3 < 3
  assert _reference_pd_fa(pred, gt) == (1, 1, 0)


def test_centroid_just_under_3_px_matches():
  gt = _mask((4, 5), _TARGET_4X5)
  # A diagonal pair (0,1),(1,0): one component, b = 2, R_p = 0 + 1 = 1, C_p = 1 + 0 = 1,
  # centroid (0.5, 0.5). Distance: (2.3, 1.9); 5.29 + 3.61 = 8.90 < 9, i.e. 2.983 px.
  # In integers: b R_g - a R_p = 28 - 5 = 23, b C_g - a C_p = 24 - 5 = 19,
  # 529 + 361 = 890 < 9 (a b)^2 = 9 * 100 = 900: match.
  pred = _mask((4, 5), [(0, 1), (1, 0)])
  r = metrics.score([pred], [gt])
  assert r['pd'] == 1.0
  assert r['num_false_alarm_pixels'] == 0 and r['fa'] == 0.0
  # Neither predicted pixel is a target pixel: fa_pixel = 2 / 20 = 0.1 while fa is 0.
  assert r['fa_pixel'] == pytest.approx(0.1)
  # With the threshold at 2.98 (< 2.983) the same pair no longer matches.
  assert metrics.score([pred], [gt], distance_threshold=2.98)['pd'] == 0.0


def test_exact_comparison_does_not_overflow_for_huge_components():
  # Sums as a 4096 x 4096 image could produce them, without allocating one: a target of
  # a = 5,000,000 px with centroid (2000.8, 1000.4) and a prediction of b = 7,000,000 px
  # with centroid (1999, 998): difference (1.8, 2.4), exactly 3 px.
  a, b = 5_000_000, 7_000_000
  gt = (np.array([a]), np.array([a * 2000 + 4_000_000]), np.array([a * 1000 + 2_000_000]))
  pred = (np.array([b]), np.array([b * 1999]), np.array([b * 998]))
  # b R_g alone is ~7e16 and its square ~5e33, far beyond int64's 9.2e18.
  assert (b * int(gt[1][0])) ** 2 > 2 ** 63
  assert not metrics._close(gt, pred, 3.0, 4095)[0, 0]  # exactly 3: no match
  # Move the prediction's row sum by one pixel-row (R_p + 1): its centroid row becomes
  # 1999 + 1/7e6, the row difference 1.8 - 1/7e6, the distance just under 3: match.
  nudged = (pred[0], pred[1] + 1, pred[2])
  assert metrics._close(gt, nudged, 3.0, 4095)[0, 0]
  # And one pixel-row the other way: just over 3, no match.
  assert not metrics._close(gt, (pred[0], pred[1] - 1, pred[2]), 3.0, 4095)[0, 0]
  # Several predictions at once: the nudged one, one far away (centroid (100, 100)) and
  # one on the target's centroid (area a and the target's own sums).
  many = tuple(np.concatenate([n, [f], [g[0]]]) for n, f, g in zip(
      nudged, (b, 100 * b, 100 * b), gt))
  assert metrics._close(gt, many, 3.0, 4095).tolist() == [[True, False, True]]


def test_int64_and_python_int_paths_agree_with_fractions():
  # Random (area, row sum, col sum) triples, areas 1..6 and centroids within 20 px, so
  # that many pairs are near 3 px and some exactly at it. Each pair is decided three
  # ways: int64 (max_coord 21), Python ints (max_coord 10^12 makes the int64 bound
  # fail) and Fractions, squared distance < 9.
  from fractions import Fraction
  rng = np.random.default_rng(3)

  def components(n):
    area = rng.integers(1, 7, n)
    return area, area * rng.integers(0, 21, n) + rng.integers(0, 2, n), area * rng.integers(
        0, 21, n)

  gt, pred = components(40), components(60)

  def d2(i, j):
    dr = Fraction(int(gt[1][i]), int(gt[0][i])) - Fraction(int(pred[1][j]), int(pred[0][j]))
    dc = Fraction(int(gt[2][i]), int(gt[0][i])) - Fraction(int(pred[2][j]), int(pred[0][j]))
    return dr * dr + dc * dc

  exact = np.array([[d2(i, j) for j in range(60)] for i in range(40)], dtype=object)
  expected = (exact < 9).astype(bool)
  assert (exact == 9).sum() > 0  # exact ties are present ...
  assert 0 < expected.sum() < expected.size  # ... and both answers
  np.testing.assert_array_equal(metrics._close(gt, pred, 3.0, 21), expected)
  np.testing.assert_array_equal(metrics._close(gt, pred, 3.0, 10 ** 12), expected)


def test_threshold_must_be_a_positive_number():
  for bad in (0.0, -1.0, float('nan'), float('inf')):
    with pytest.raises(ValueError, match='distance_threshold'):
      metrics.MetricAccumulator(distance_threshold=bad)


# --------------------------------------------------------------------------- matching
def test_match_components_reports_each_component():
  shape = (8, 8)
  # As in test_label_order_not_nearest_decides_the_match: target (4,4); P1 = (2,4) is
  # label 1 and matches (distance 2); P2 = (4,5),(4,6) is label 2 and is a false alarm.
  # A second target (7,0) has no prediction within 3 px: missed.
  gt = _mask(shape, [(4, 4), (7, 0)])
  pred = _mask(shape, [(2, 4), (4, 5), (4, 6)])
  m = metrics.match_components(pred, gt)
  assert m.pred_labels[2, 4] == 1 and m.pred_labels[4, 5] == m.pred_labels[4, 6] == 2
  assert m.gt_labels[4, 4] == 1 and m.gt_labels[7, 0] == 2
  assert m.pred_areas.tolist() == [1, 2]
  assert m.gt_areas.tolist() == [1, 1]
  assert m.gt_match.tolist() == [0, -1]  # target 1 -> P1 (index 0); target 2 missed
  assert m.pred_matched.tolist() == [True, False]
  assert (m.num_targets, m.num_matched) == (2, 1)
  assert (m.num_false_alarm_components, m.num_false_alarm_pixels) == (1, 2)


# --------------------------------------------------------------------------- fa_pixel
def test_fa_pixel_counts_pixels_not_components():
  shape = (10, 10)  # 100 px
  # Target 1: the 2x2 square rows 1-2, cols 1-2, centroid (1.5, 1.5).
  # Target 2: one pixel at (9, 0).
  gt = _square(shape, 1, 1, 2) | _mask(shape, [(9, 0)])
  # P1: the 3x3 square rows 1-3, cols 1-3, centroid (2, 2), 0.71 px from target 1:
  # matched, but 9 - 4 = 5 of its pixels are not target pixels.
  # P2: row 9, cols 0..8 (9 px), centroid (9, 4), 4 px from target 2: not matched, a
  # false alarm of 9 px of which 1, (9, 0), is a target pixel.
  pred = _square(shape, 1, 1, 3) | _mask(shape, [(9, c) for c in range(9)])
  r = metrics.score([pred], [gt])
  assert r['pd'] == 0.5  # 1 of 2 targets
  # Component-based: the 9 pixels of P2 -> fa = 9 / 100.
  assert r['num_false_alarm_pixels'] == 9
  assert r['fa'] == pytest.approx(0.09)
  assert r['fa_e6'] == pytest.approx(90000.0)
  # Pixel-based |P \ G|: 5 (P1 outside target 1) + 8 (P2 without (9, 0)) = 13 -> 0.13.
  assert r['num_pred_pixels_outside_gt'] == 13
  assert r['fa_pixel'] == pytest.approx(0.13)
  assert r['fa_pixel_e6'] == pytest.approx(130000.0)


def test_fa_pixel_is_summed_over_the_set_and_merged():
  # Image 1 (4x4): pred (0,0),(0,1), gt (0,0): |P \ G| = 1.
  # Image 2 (2x8): pred (1,5),(1,6),(1,7), no gt: |P \ G| = 3.
  # fa_pixel = (1 + 3) / (16 + 16) = 0.125.
  acc1, acc2 = metrics.MetricAccumulator(), metrics.MetricAccumulator()
  acc1.update(_mask((4, 4), [(0, 0), (0, 1)]), _mask((4, 4), [(0, 0)]))
  acc2.update(_mask((2, 8), [(1, 5), (1, 6), (1, 7)]), np.zeros((2, 8), bool))
  acc1.merge(acc2)
  r = acc1.result()
  assert r['num_pred_pixels_outside_gt'] == 4
  assert r['fa_pixel'] == pytest.approx(0.125)
  # The component-based fa: image 1's pair is matched (centroid (0, 0.5), 0.5 px), image
  # 2's streak is a false alarm of 3 px: 3 / 32.
  assert r['fa'] == pytest.approx(3 / 32)


# --------------------------------------------------------------------------- formatting
def test_format_metrics():
  m = {'miou': 0.6628256513, 'niou': 0.62219, 'pd': 0.900346, 'fa': 144.9567e-6,
       'fa_e6': 144.9567, 'fa_pixel': 12.344e-6, 'fa_pixel_e6': 12.344}
  assert metrics.format_metrics(m) == 'mIoU 0.6628  nIoU 0.6222  Pd 0.9003  Fa 144.96e-6'
  assert metrics.format_metrics(m, ('miou', 'pd', 'fa', 'fa_pixel')) == (
      'mIoU 0.6628  Pd 0.9003  Fa 144.96e-6  Fa_pixel 12.34e-6')
  assert metrics.format_metrics({**m, 'pd': None}) == (
      'mIoU 0.6628  nIoU 0.6222  Pd n/a  Fa 144.96e-6')
  # A real result of a set without targets formats too.
  empty = metrics.score([np.zeros((2, 2), bool)], [np.zeros((2, 2), bool)])
  assert metrics.format_metrics(empty) == 'mIoU 0.0000  nIoU 0.0000  Pd n/a  Fa 0.00e-6'
