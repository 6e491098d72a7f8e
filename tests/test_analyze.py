"""``limijax.analysis`` and ``python -m limijax.analyze``: the threshold sweep worked out by
hand and equal to :func:`limijax.metrics.score` at every threshold, the Pd-Fa area, the
buckets and the contrast, the per-image order, the galleries, the operating point equal to
``evaluate``'s (saved maps and a trained run), and bad input: one line, nothing written."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from scipy import ndimage

from limijax import analysis
from limijax import metrics
from limijax import predict
from tiny_run import REPO, assert_one_line_error


def _run(module, *args, timeout=180):
  return subprocess.run([sys.executable, '-m', module, *args], capture_output=True,
                        text=True, timeout=timeout, cwd=REPO)


def _last_json(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _save(path, array):
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


# --------------------------------------------------------------------------- by hand


def _hand_samples():
  """a (16x16): a 2x2 target at grey 200 (p 0.784) and a lone pixel at 100 (p 0.392) far
  from it; b (16x16): a 3x3 target at 150 (p 0.588) and a 2x2 false alarm at 230 (p
  0.902); c (8x8): nothing at all. 576 pixels."""
  a_gt, a_v = np.zeros((16, 16), bool), np.zeros((16, 16), np.uint8)
  a_gt[2:4, 2:4], a_v[2:4, 2:4], a_v[10, 10] = True, 200, 100
  b_gt, b_v = np.zeros((16, 16), bool), np.zeros((16, 16), np.uint8)
  b_gt[8:11, 8:11], b_v[8:11, 8:11], b_v[1:3, 12:14] = True, 150, 230
  c_gt, c_v = np.zeros((8, 8), bool), np.zeros((8, 8), np.uint8)
  return [analysis.Sample(s, g, v, False) for s, g, v in
          (('a', a_gt, a_v), ('b', b_gt, b_v), ('c', c_gt, c_v))]


def _at(result, t):
  return result.curve[int(np.flatnonzero(result.thresholds == t)[0])]


def test_sweep_points_worked_out_by_hand():
  result = analysis.analyse(_hand_samples(), threads=1)
  assert len(result.thresholds) >= 50
  # 0.3: both targets found; false alarms: a's pixel (1) and b's block (4).
  p = _at(result, 0.3)
  assert (p['pd'], p['num_false_alarm_components'], p['num_false_alarm_pixels']) == (1, 2, 5)
  assert p['fa'] == pytest.approx(5 / 576) and p['num_pixels'] == 576
  assert p['miou'] == pytest.approx(13 / 18)  # I = 4 + 9, U = 13 + 5
  assert p['niou'] == pytest.approx((4 / 5 + 9 / 13 + 0) / 3)
  # 0.5: a's 0.392 pixel drops out.
  p = _at(result, 0.5)
  assert (p['pd'], p['num_false_alarm_pixels'], p['miou']) == (1, 4, pytest.approx(13 / 17))
  # 0.7: b's target (0.588) is missed; its false alarm (0.902) stays.
  p = _at(result, 0.7)
  assert p['pd'] == 0.5 and p['fa'] == pytest.approx(4 / 576)
  assert p['miou'] == pytest.approx(4 / 17) and p['niou'] == pytest.approx(1 / 3)
  # Every Fa is far above 100e-6: nothing within the default bound.
  assert result.area == 0.0
  # With the bound at 10000e-6, Pd 1 is reached at Fa 4/576 = 6944.4e-6 (t 0.40-0.58):
  wide = analysis.analyse(_hand_samples(), fa_bound_e6=1e4, threads=1)
  assert wide.area == pytest.approx((1e4 - 4e6 / 576) / 1e4)


def test_pd_fa_area_by_hand():
  fa, pd = [200, 0, 10, 50], [1.0, 0.2, 0.5, 0.8]
  # best: 0.2 on [0, 10), 0.5 on [10, 50), 0.8 on [50, 100): 2 + 20 + 40 over 100.
  assert analysis.pd_fa_area(fa, pd, 100) == pytest.approx(0.62)
  assert analysis.pd_fa_area(fa, pd, 30) == pytest.approx((0.2 * 10 + 0.5 * 20) / 30)
  # A lower Pd at a higher Fa never lowers the best Pd within a budget.
  assert analysis.pd_fa_area([0, 10, 20], [0.5, 0.3, 1.0], 40) == pytest.approx(
      (0.5 * 20 + 1.0 * 20) / 40)
  assert analysis.pd_fa_area([5, 8], [1.0, 1.0], 4) == 0.0
  assert analysis.pd_fa_area([0, 1], [None, None], 4) is None


def _blob_set(seed, logits):
  """Four images of 40x48 with targets and blobs of every probability, some merging
  as the threshold drops; logits or 8-bit maps."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:40, :48]
  samples = []
  for i in range(4):
    gt, score = np.zeros((40, 48), bool), np.full((40, 48), -6.0)
    for _ in range(3):
      r, c = rng.integers(3, 37), rng.integers(3, 45)
      gt[r - 1:r + 2, c - 1:c + 1] = True
      score += rng.uniform(0, 12) * np.exp(-((yy - r - rng.normal()) ** 2 +
                                             (xx - c) ** 2) / rng.uniform(1, 6))
    for _ in range(4):  # blobs where there is no target
      r, c = rng.integers(0, 40), rng.integers(0, 48)
      score += rng.uniform(0, 10) * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 3)
    score += rng.normal(0, 0.5, score.shape)
    if logits:
      values = score.astype(np.float32)
    else:
      values = np.round(255 / (1 + np.exp(-score))).astype(np.uint8)
    samples.append(analysis.Sample(f'i{i}', gt, values, logits))
  return samples


@pytest.mark.parametrize('logits', [False, True])
def test_every_threshold_equals_metrics_score(logits):
  samples = _blob_set(3, logits)
  result = analysis.analyse(samples)
  gts = [s.gt for s in samples]
  cuts = analysis.cutoffs(result.thresholds, logits)
  if logits:  # logit(t), exactly 0 at 0.5
    t = result.thresholds
    np.testing.assert_allclose(1 / (1 + np.exp(-cuts)), t, rtol=1e-12)
    assert cuts[t == 0.5] == 0.0
  for t, cut, point in zip(result.thresholds, cuts, result.curve):
    if logits:
      preds = [s.values.astype(np.float64) > cut for s in samples]
    else:
      preds = [metrics.binarize_probabilities(s.values.astype(np.float64) / 255.0, t)
               for s in samples]
    assert point == metrics.score(preds, gts), t
  # At 0.5 the cut is evaluate's own: logits > 0, or value / 255 > 0.5.
  own = ([metrics.binarize_logits(s.values) for s in samples] if logits else
         [metrics.binarize_probabilities(s.values / 255.0) for s in samples])
  assert result.operating_point == metrics.score(own, gts)
  assert len({p['num_false_alarm_pixels'] for p in result.curve}) > 10  # a real sweep


# --------------------------------------------------------------------------- buckets


def test_size_buckets_known_counts():
  gt, v = np.zeros((40, 100), bool), np.zeros((40, 100), np.uint8)
  for rows, cols in ((slice(2, 4), slice(2, 4)), (slice(2, 6), slice(10, 14)),
                     (slice(2, 7), slice(20, 30)), (slice(2, 12), slice(40, 50)),
                     (slice(20, 30), slice(60, 80))):  # areas 4, 16, 50, 100, 200
    gt[rows, cols] = True
  v[2:4, 2:4] = 255  # found exactly
  v[2:6, 10:12] = 255  # half of the 4x4 target: centroid 1 px away, IoU 8 / 16
  v[2:12, 40:50] = 255  # found exactly; 50 and 200 missed
  result = analysis.analyse([analysis.Sample('s', gt, v, False)], threads=1)
  rows = analysis.buckets(result.targets, 'size')
  assert [r['bucket'] for r in rows] == ['1-9', '10-25', '26-64', '65-144', '>144']
  assert [r['targets'] for r in rows] == [1, 1, 1, 1, 1]
  assert [r['missed'] for r in rows] == [0, 0, 1, 0, 1]
  assert [r['pd'] for r in rows] == [1.0, 1.0, 0.0, 1.0, 0.0]
  assert [r['mean_iou'] for r in rows] == [1.0, 0.5, 0.0, 1.0, 0.0]
  assert [analysis.area_bucket(a) for a in (1, 9, 10, 25, 26, 64, 65, 144, 145)] == [
      0, 0, 1, 1, 2, 2, 3, 3, 4]
  # Without a grey image every target is in the contrast bucket n/a.
  assert [(r['bucket'], r['targets']) for r in analysis.buckets(result.targets, 'contrast')
          if r['targets']] == [('n/a', 5)]


def test_contrast_of_a_known_target():
  # Checkerboard clutter of 100 and 120 (mean 110, std 10), a 2x2 target at 200: the
  # ring (within 5 px, not a target) holds 68 pixels of each value, so SCR = 90 / 10.
  image = np.where((np.add.outer(np.arange(20), np.arange(20)) % 2) == 0, 100, 120)
  image = image.astype(np.uint8)
  gt = np.zeros((20, 20), bool)
  gt[9:11, 9:11] = True
  image[9:11, 9:11] = 200
  gt[13:15, 13:15] = True  # a second target inside the first one's ring: left out of it
  image[13:15, 13:15] = 255
  sample = analysis.Sample('k', gt, np.where(gt, 255, 0).astype(np.uint8), False, image)
  _, targets, _ = analysis.image_details(0, sample)
  assert targets[0].area == 4 and targets[0].contrast == pytest.approx(9.0)
  assert targets[0].found and targets[0].iou == 1.0 and targets[0].p_max == 1.0
  rows = analysis.buckets(targets, 'contrast')
  assert [r['bucket'] for r in rows] == ['<1', '1-2', '2-4', '4-8', '>=8']
  assert rows[-1]['targets'] == 2 and sum(r['targets'] for r in rows) == 2
  assert [analysis.contrast_bucket(c) for c in (-3, 0.99, 1, 2, 3.9, 4, 8, None)] == [
      0, 0, 1, 2, 2, 3, 4, 5]
  # A flat background: the ring's std is floored at one grey level.
  flat = np.full((20, 20), 50, np.uint8)
  flat[9:11, 9:11] = 80
  sample = analysis.Sample('f', gt, sample.values, False, flat)
  assert analysis.image_details(0, sample)[1][0].contrast == pytest.approx(30.0)


# --------------------------------------------------------------------------- the command


@pytest.fixture
def folders(tmp_path):
  """Four 24x24 images. a: its target found. b: its target missed, a 3 px false alarm.
  c: two targets missed. d: its target found, a 6 px false alarm. Worst first: c, b, d,
  a."""
  probs, masks, images = (tmp_path / n for n in ('probs', 'masks', 'images'))
  for f in (probs, masks, images):
    f.mkdir()
  rng = np.random.default_rng(0)
  layout = {'a': ([(5, 5)], [(5, 5)], []), 'b': ([(12, 12)], [], [(2, 20, 3)]),
            'c': ([(4, 4), (18, 18)], [], []), 'd': ([(10, 6)], [(10, 6)], [(20, 2, 6)])}
  for stem, (targets, found, alarms) in layout.items():
    gt, p = np.zeros((24, 24)), np.zeros((24, 24))
    image = rng.integers(40, 60, (24, 24))
    for r, c in targets:
      gt[r:r + 2, c:c + 2] = 255
      image[r:r + 2, c:c + 2] = 200
    for r, c in found:
      p[r:r + 2, c:c + 2] = 220
    for r, c, n in alarms:
      p[r, c:c + n] = 180
    _save(masks / f'{stem}.png', gt)
    _save(probs / f'{stem}.png', p)
    _save(images / f'{stem}.png', image)
  return probs, masks, images, tmp_path


def _panels(path, colour):
  """Panels of a gallery: frames of ``colour``, the size of one framed tile."""
  rgb = np.asarray(Image.open(path).convert('RGB'))
  labels, _ = ndimage.label(np.all(rgb == colour, axis=-1))
  side = analysis.GALLERY_TILE + 2 * analysis.GALLERY_BORDER
  return sum((s[0].stop - s[0].start, s[1].stop - s[1].start) == (side, side)
             for s in ndimage.find_objects(labels))


def test_folders_analysed_as_evaluate_scores_them(folders):
  probs, masks, images, tmp = folders
  out = tmp / 'out'
  summary = _last_json(_run('limijax.analyze', f'--prob_dir={probs}', f'--mask_dir={masks}',
                            f'--image_dir={images}', f'--out={out}', '--gallery=2'))
  assert sorted(os.listdir(out)) == sorted([
      'report.md', 'roc.png', 'roc.json', 'by_size.json', 'by_size.png', 'by_contrast.json',
      'by_contrast.png', 'per_image.csv', 'gallery_missed.png', 'gallery_false_alarms.png'])
  assert [n for n in os.listdir(tmp) if n.startswith('.')] == []  # no temporary left
  evaluated = _last_json(_run('limijax.evaluate', f'--pred_dir={probs}',
                              f'--mask_dir={masks}'))
  roc = json.loads((out / 'roc.json').read_text())
  assert roc['operating_point'] == evaluated == summary['operating_point']
  assert evaluated['pd'] == pytest.approx(2 / 5) and evaluated['num_false_alarm_pixels'] == 9
  assert len(roc['points']) >= 50 and roc['fa_bound_e6'] == 100.0
  with open(out / 'per_image.csv') as f:
    lines = list(csv.DictReader(f))
  assert [l['stem'] for l in lines] == ['c', 'b', 'd', 'a']  # worst first
  assert [int(l['missed']) for l in lines] == [2, 1, 0, 0]
  assert [int(l['fa_pixels']) for l in lines] == [0, 3, 6, 0]
  assert lines[-1]['iou'] == '1.000000'
  # 3 missed targets and 2 false alarms, at most 2 panels each.
  for name, colour, n in (('missed', predict.MISS_COLOUR, 2),
                          ('false_alarms', predict.FALSE_ALARM_COLOUR, 2)):
    picture = Image.open(out / f'gallery_{name}.png')
    assert picture.size[::-1] == analysis.gallery_layout(n)[2:]
    assert _panels(out / f'gallery_{name}.png', colour) == n
  by_size = json.loads((out / 'by_size.json').read_text())
  assert by_size['buckets'][0] == {'bucket': '1-9', 'targets': 5, 'matched': 2, 'missed': 3,
                                   'pd': 0.4, 'mean_iou': pytest.approx(0.4)}
  by_contrast = json.loads((out / 'by_contrast.json').read_text())
  assert sum(b['targets'] for b in by_contrast['buckets']) == 5
  assert by_contrast['buckets'][-1]['bucket'] == '>=8'  # 200 on 40-59 clutter
  report = (out / 'report.md').read_text()
  assert metrics.format_metrics(evaluated, ('miou', 'niou', 'pd', 'fa', 'fa_pixel')) in report
  for name in ('roc.png', 'by_size.png', 'by_contrast.png', 'gallery_missed.png'):
    assert f']({name})' in report


def test_gallery_of_every_case_and_of_none():
  samples = _hand_samples()
  result = analysis.analyse(samples, threads=1)
  cases = analysis.worst_false_alarms(result.false_alarms)
  assert [(c.stem, c.area) for c in cases] == [('b', 4)]
  for n in (0, 1, 7):
    picture = analysis.gallery((cases * 7)[:n], samples, predict.FALSE_ALARM_COLOUR)
    assert picture.shape[:2] == analysis.gallery_layout(n)[2:]
  assert analysis.gallery_layout(7)[:2] == (2, analysis.GALLERY_COLUMNS)


def test_saved_maps_never_load_jax():
  proc = subprocess.run([sys.executable, '-c', 'import sys, limijax.analyze; '
                         'print("jax" in sys.modules)'], capture_output=True, text=True,
                        timeout=60)
  assert proc.stdout.strip() == 'False', proc.stderr[-2000:]


def test_bad_input_one_line_and_nothing_written(folders):
  probs, masks, images, tmp = folders
  out = tmp / 'new' / 'out'
  args = [f'--prob_dir={probs}', f'--mask_dir={masks}', f'--out={out}']
  (probs / 'b.png').rename(tmp / 'b.png')  # a missing probability map
  assert_one_line_error(_run('limijax.analyze', *args), str(masks / 'b.png'), 'b.png')
  (tmp / 'b.png').rename(probs / 'b.png')
  _save(probs / 'a.png', np.zeros((24, 25)))  # another size
  assert_one_line_error(_run('limijax.analyze', *args), str(probs / 'a.png'), 'size')
  (probs / 'a.png').write_bytes(b'not a png')  # an unreadable file
  assert_one_line_error(_run('limijax.analyze', *args), str(probs / 'a.png'))
  missing = tmp / 'nowhere'  # a folder that is not there, and a file given as a folder
  assert_one_line_error(_run('limijax.analyze', f'--prob_dir={missing}', f'--mask_dir={masks}',
                             f'--out={out}'), str(missing))
  assert_one_line_error(_run('limijax.analyze', f'--prob_dir={probs / "d.png"}',
                             f'--mask_dir={masks}', f'--out={out}'), str(probs / 'd.png'))
  _save(probs / 'a.png', np.zeros((24, 24)))
  (images / 'c.png').unlink()  # a missing input image
  with_images = [*args, f'--image_dir={images}']
  assert_one_line_error(_run('limijax.analyze', *with_images), 'c.png', str(images))
  assert not (tmp / 'new').exists()
  # An existing output folder keeps its content when the analysis fails.
  kept = tmp / 'kept'
  kept.mkdir()
  (kept / 'report.md').write_text('earlier')
  assert_one_line_error(_run('limijax.analyze', *with_images[:2], f'--image_dir={images}',
                             f'--out={kept}'), 'c.png')
  assert os.listdir(kept) == ['report.md'] and (kept / 'report.md').read_text() == 'earlier'
  assert [n for n in os.listdir(tmp) if n.startswith('.')] == []
  assert_one_line_error(_run('limijax.analyze', *args[:2]), '--out is required')


def test_workdir_run_equals_its_test_metrics_and_replaces_the_old_analysis(tiny_run, tmp_path):
  workdir, results = tiny_run
  copy = tmp_path / 'run'  # the shared run stays read only; this copy gets the analysis
  shutil.copytree(workdir, copy)
  default = copy / 'analysis' / 'test'
  default.mkdir(parents=True)
  (default / 'stale.txt').write_text('from an earlier analysis')
  summary = _last_json(_run('limijax.analyze', f'--workdir={copy}'))
  roc = json.loads((default / 'roc.json').read_text())
  assert roc['operating_point'] == results['test'] == summary['operating_point']
  assert summary['out'] == str(default)
  assert not (default / 'stale.txt').exists() and (default / 'report.md').exists()
  assert [n for n in os.listdir(copy / 'analysis') if n.startswith('.')] == []
  with open(default / 'per_image.csv') as f:
    assert len(list(csv.DictReader(f))) == results['test']['num_images']
  # A run without a checkpoint: one line naming the folder, nothing written.
  empty = tmp_path / 'empty'
  empty.mkdir()
  shutil.copy(copy / 'config.json', empty / 'config.json')
  assert_one_line_error(_run('limijax.analyze', f'--workdir={empty}'), str(empty), 'checkpoint')
  assert os.listdir(empty) == ['config.json']
