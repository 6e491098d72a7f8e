"""``limijax.compare``: per-image statistics that add up to the set's metrics, the paired
bootstrap (zero, large and reproducible differences), the per-image cache, and the
command on the shared tiny runs (against itself, against other images, seeds)."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from limijax import compare
from limijax import metrics
from limijax.errors import UserError
from tiny_run import REPO, assert_one_line_error

METRIC_KEYS = [m[0] for m in compare.METRICS]


# --------------------------------------------------------------------------- helpers
def _record(i, mask, logits):
  mask = np.asarray(mask, bool)
  image = (np.arange(mask.size, dtype=np.int64).reshape(mask.shape) * 7 + i) % 256
  return {'id': f'img_{i:03d}', 'image': image.astype(np.uint8), 'mask': mask,
          'logits': np.asarray(logits, np.float32)}


def _random_records(n, seed, flip=0.0):
  """n images of random sizes with a few small targets; the prediction finds most of
  them, with ragged edges and some false alarms (more with ``flip``)."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    h, w = rng.integers(12, 30, size=2)
    mask = np.zeros((h, w), bool)
    for _ in range(rng.integers(0, 3)):
      r, c = rng.integers(0, h - 3), rng.integers(0, w - 3)
      mask[r:r + rng.integers(1, 4), c:c + rng.integers(1, 4)] = True
    pred = mask & (rng.random((h, w)) > 0.2)
    pred |= rng.random((h, w)) < 0.01 + flip
    if rng.random() < 0.3:
      pred[:] = False  # a missed image
    out.append(_record(i, mask, np.where(pred, 2.0, -2.0)))
  return out


def _blobs(n, detect, false_alarm=False, miss=()):
  """n 16x16 images, each with one 3x3 target; ``detect``: the prediction is the target
  (except images in ``miss``), else empty; ``false_alarm`` adds a far-away pixel."""
  out = []
  for i in range(n):
    mask = np.zeros((16, 16), bool)
    mask[3 + i % 5:6 + i % 5, 4:7] = True
    pred = mask.copy() if detect and i not in miss else np.zeros_like(mask)
    if false_alarm:
      pred[15, 15] = True
    out.append(_record(i, mask, np.where(pred, 3.0, -3.0)))
  return out


# --------------------------------------------------------------------------- statistics
def test_per_image_sums_give_exactly_the_whole_sets_metrics():
  records = _random_records(40, seed=0)
  # Hand-made corner cases too: an empty image (nIoU term 0), a diagonal streak (one
  # 8-connected target) found in part, a false alarm beside a matched target.
  empty = np.zeros((6, 6), bool)
  streak = np.eye(6, dtype=bool)
  part = streak.copy()
  part[4:, 4:] = False
  pair = np.zeros((8, 8), bool)
  pair[2:4, 2:4] = True
  pair_pred = pair.copy()
  pair_pred[7, 7] = True
  for k, (mask, pred) in enumerate([(empty, empty), (streak, part), (pair, pair_pred)]):
    records.append(_record(100 + k, mask, np.where(pred, 1.0, -1.0)))
  whole = metrics.MetricAccumulator()
  for r in records:
    whole.update(r['logits'] > 0, r['mask'])
  stats = compare.image_stats(records)
  assert stats.ids == [r['id'] for r in records]
  assert compare.accumulate(stats).result() == whole.result()  # exactly, floats included
  col = {f: stats.sums[:, k] for k, f in enumerate(compare.FIELDS)}
  assert col['num_false_alarm_pixels'].sum() == whole.num_false_alarm_pixels
  assert col['num_targets'].sum() == whole.num_targets > 0
  eps = float(np.spacing(1))
  assert list(col['niou_sum'][-3:]) == [0.0, 4 / (6 + eps), 4 / (5 + eps)]
  assert list(col['num_false_alarm_pixels'][-3:]) == [0, 0, 1]
  assert [sum(h) for h in stats.hits] == list(col['num_matched_targets'])
  assert stats.hits[-3:] == [[], [1], [1]]
  # The bootstrap's vectorised metric of the plain sums is the set's metric.
  totals = stats.sums.sum(axis=0)
  for key in METRIC_KEYS:
    assert compare.metric_of_totals(totals, key) == pytest.approx(whole.result()[key])


def test_identical_statistics_give_a_zero_interval():
  stats = compare.image_stats(_random_records(30, seed=1))
  other = compare.image_stats(_random_records(30, seed=1, flip=0.02))  # another seed
  for key in METRIC_KEYS:
    r = compare.paired_interval(stats, stats, key)
    assert (r['diff'], r['low'], r['high']) == (0.0, 0.0, 0.0), r
    seeds = compare.paired_interval([stats, other], [stats, other], key, seed=5)
    assert (seeds['diff'], seeds['low'], seeds['high']) == (0.0, 0.0, 0.0), seeds
  report = compare.compare_stats([stats, other], [stats, other])
  assert not any(row['beyond_test'] for row in report['metrics'].values())
  assert 'no difference shown' in compare.verdict(report)


def test_a_large_difference_is_beyond_both_uncertainties_and_the_verdict_says_so():
  all_found = compare.image_stats(_blobs(30, detect=True))
  one_missed = compare.image_stats(_blobs(30, detect=True, miss=(4,)))
  none_found = compare.image_stats(_blobs(30, detect=False))
  pd = compare.paired_interval(all_found, none_found, 'pd')
  assert (pd['diff'], pd['low'], pd['high']) == (1.0, 1.0, 1.0)
  report = compare.compare_stats([all_found, one_missed], [none_found, none_found])
  row = report['metrics']['miou']
  assert row['diff'] > 0.9 and row['ci'][0] > 0 and row['beyond_test']
  assert row['seed_std_a'] > 0 and row['seed_std_b'] == 0 and row['beyond_seeds']
  line = compare.verdict(report)
  assert line.startswith('verdict (mIoU)') and 'excludes 0' in line
  assert line.endswith('A is better'), line
  assert report['targets'] == {'num_targets': 30, 'detected_more_by_a': 30,
                               'detected_more_by_b': 0}
  # One seed a side: the test-set uncertainty is exceeded, the seed one is unknown.
  single = compare.compare_stats(all_found, none_found)
  assert single['metrics']['pd']['beyond_test'] and single['metrics']['pd']['seed_se'] is None
  assert 'not established' in compare.verdict(single, 'pd')
  # Fa: lower is better, so false alarms on side A make B the better one.
  noisy = compare.image_stats(_blobs(30, detect=True, false_alarm=True))
  fa = compare.compare_stats([noisy, noisy], [all_found, one_missed])
  assert fa['metrics']['fa_e6']['diff'] > 0
  assert compare.verdict(fa, 'fa').endswith('B is better')


def test_the_bootstrap_is_seeded_and_has_2000_rounds_by_default():
  a = compare.image_stats(_random_records(40, seed=3))
  b = compare.image_stats(_random_records(40, seed=3, flip=0.01))
  assert inspect.signature(compare.paired_interval).parameters['resamples'].default >= 2000
  first = compare.paired_interval(a, b, 'miou', seed=3)
  assert first['resamples'] == 2000 and first['low'] < first['high']
  assert compare.paired_interval(a, b, 'miou', seed=3) == first
  other = compare.paired_interval(a, b, 'miou', seed=4)
  assert (other['low'], other['high']) != (first['low'], first['high'])
  assert compare.bootstrap_differences(a, b, ('niou',))['niou'].shape == (2000,)
  # The same rounds whatever the other metrics: the table's interval is the library's.
  assert compare.compare_stats(a, b, seed=3)['metrics']['miou']['ci'] == [first['low'],
                                                                        first['high']]
  # 400 images, five seeds a side (its time is measured in BENCHMARKS.md, not here).
  rng = np.random.default_rng(0)
  big = []
  for s in range(10):
    sums = rng.integers(0, 50, size=(400, len(compare.FIELDS))).astype(np.float64)
    sums[:, compare.FIELDS.index('num_images')] = 1
    big.append(compare.ImageStats([str(i) for i in range(400)], ['0'] * 400, sums,
                                  [[]] * 400))
  report = compare.compare_stats(big[:5], big[5:])
  assert report['resamples'] == 2000 and report['seeds_a'] == report['seeds_b'] == 5


def test_images_that_differ_are_refused_by_name():
  ids = ['a', 'b', 'c']
  compare.check_same_images([('r1', ids, ['1', '2', '3']), ('r2', ids[::-1], ['3', '2', '1'])],
                            'test')  # another order is the same images
  with pytest.raises(compare.UserError, match="image 'c' of r1 is not in the test split of r2"):
    compare.check_same_images([('r1', ids, ['1', '2', '3']), ('r2', ['a', 'b'], ['1', '2'])],
                              'test')
  with pytest.raises(compare.UserError, match="image 'b' has other pixels"):
    compare.check_same_images([('r1', ids, ['1', '2', '3']), ('r2', ids, ['1', 'x', '3'])],
                              'test')


# --------------------------------------------------------------------------- cache
def _copy(run, tmp_path, name):
  return shutil.copytree(run, tmp_path / name)


def test_the_cache_is_read_back_and_ignored_once_stale(tiny_run, tmp_path):
  run = str(_copy(tiny_run[0], tmp_path, 'run'))
  stats = compare.image_stats(_random_records(5, seed=4), run)
  path = compare.write_cache(run, 'test', stats)
  assert path == os.path.join(run, 'analysis', 'per_image_test.json')
  back = compare.read_cache(run, 'test')
  assert back.ids == stats.ids and back.hits == stats.hits and back.digests == stats.digests
  assert np.array_equal(back.sums, stats.sums)
  assert compare.read_cache(run, 'val') is None
  # A best checkpoint newer than the cache makes it stale.
  best = os.path.join(run, 'checkpoints', 'best')
  newest = max(os.path.join(d, f) for d, _, fs in os.walk(best) for f in fs)
  later = os.path.getmtime(path) + 10
  os.utime(newest, (later, later))
  assert compare.read_cache(run, 'test') is None
  os.utime(path, (later + 10, later + 10))
  assert compare.read_cache(run, 'test') is not None
  # So does another data config.
  config_path = os.path.join(run, 'config.json')
  with open(config_path) as f:
    config = json.load(f)
  config['data']['split_seed'] += 1
  with open(config_path, 'w') as f:
    json.dump(config, f)
  assert compare.read_cache(run, 'test') is None


# --------------------------------------------------------------------------- command
def _compare(*args):
  return subprocess.run([sys.executable, '-m', 'limijax.compare', *map(str, args)],
                        capture_output=True, text=True, timeout=300, cwd=REPO)


def _last_json(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def run_copy(tiny_run, tmp_path_factory):
  """A copy of the shared tiny run, which these tests may give a cache."""
  return str(_copy(tiny_run[0], tmp_path_factory.mktemp('compare'), 'run'))


def test_a_run_against_itself_differs_by_zero_and_is_cached(run_copy, tiny_run):
  proc = _compare(run_copy, run_copy, '--json')
  report = _last_json(proc)
  for key in METRIC_KEYS:
    row = report['metrics'][key]
    assert row['diff'] == 0.0 and row['ci'] == [0.0, 0.0], (key, row)
    assert row['a'] == pytest.approx(tiny_run[1]['test'][key], abs=1e-9)
  assert report['resamples'] == 2000 and report['num_images'] == 10
  assert 'no difference shown' in report['verdict'] and 'verdict (mIoU)' in proc.stdout
  assert '| mIoU |' in proc.stdout
  cache = os.path.join(run_copy, 'analysis', 'per_image_test.json')
  written = os.path.getmtime(cache)
  again = _compare(run_copy, run_copy)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'per-image statistics from' in again.stderr and os.path.getmtime(cache) == written


def test_a_run_kept_without_checkpoints_compares_from_its_per_image_statistics(run_copy,
                                                                              tmp_path):
  full = compare.load_sides(run_copy, run_copy, 'test')  # writes the cache if missing
  kept = tmp_path / 'kept'  # what a results folder holds: config, results, the cache
  kept.mkdir()
  for name in ('config.json', 'results.json'):
    shutil.copy(os.path.join(run_copy, name), kept / name)
  shutil.copytree(os.path.join(run_copy, 'analysis'), kept / 'analysis')
  a, b = compare.load_sides(str(kept), run_copy, 'test')
  np.testing.assert_array_equal(a[0].sums, full[0][0].sums)
  assert a[0].ids == full[0][0].ids and a[0].hits == full[0][0].hits
  shutil.rmtree(kept / 'analysis')  # neither checkpoint nor statistics: one clear line
  with pytest.raises(UserError, match='holds no best checkpoint .* and no per-image'):
    compare.load_sides(str(kept), run_copy, 'test')


def test_runs_on_other_images_are_refused_before_anything_is_written(tiny_run, tmp_path):
  a = str(_copy(tiny_run[0], tmp_path, 'a'))
  b = str(_copy(tiny_run[0], tmp_path, 'b'))
  ids, digests = compare.split_images(a, 'test')
  other = ids[:-1] + ['not-in-a']  # B's cache says its last test image is another one
  n = len(ids)
  compare.write_cache(b, 'test', compare.ImageStats(
      other, digests, np.zeros((n, len(compare.FIELDS))), [[]] * n, b))
  cache_b = compare.cache_path(b, 'test')
  before = os.path.getmtime(cache_b)
  proc = _compare(a, b, '--json')
  line = assert_one_line_error(proc, 'not scored on the same test images', repr(ids[-1]))
  assert proc.stdout == '', proc.stdout
  assert not os.path.exists(os.path.join(a, 'analysis')), line
  assert os.path.getmtime(cache_b) == before


def test_a_folder_of_seeds_against_one_run_reports_the_seed_spread(tiny_two_seeds, run_copy,
                                                                   tmp_path):
  seeds = _copy(tiny_two_seeds[0], tmp_path, 'seeds')
  proc = _compare(seeds, run_copy, '--json')
  report = _last_json(proc)
  assert len(report['a']['runs']) == 2 and len(report['b']['runs']) == 1
  tests = [r['test'] for r in tiny_two_seeds[1]['runs']]
  for key in ('miou', 'niou', 'fa_e6'):
    row = report['metrics'][key]
    assert row['a'] == pytest.approx(np.mean([t[key] for t in tests]), abs=1e-9)
    assert row['seed_std_a'] == pytest.approx(np.std([t[key] for t in tests], ddof=1),
                                              abs=1e-9)
    assert row['seed_std_b'] is None and row['seed_se'] is not None
    assert row['beyond_seeds'] is not None and row['ci'][0] <= row['ci'][1]
  assert 'seed std A' in proc.stdout
  for run in report['a']['runs']:
    assert os.path.isfile(compare.cache_path(run, 'test'))
