"""The ``python -m limijax.evaluate --pred_dir --mask_dir`` command, run as a user runs it."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest


def _run(*args):
  return subprocess.run([sys.executable, '-m', 'limijax.evaluate', *args],
                        capture_output=True, text=True, timeout=60)


def _save(path, array):
  Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


@pytest.fixture
def folders(tmp_path):
  """Two images; the expected metrics are worked out in test_scores_saved_predictions."""
  masks, preds = tmp_path / 'masks', tmp_path / 'preds'
  masks.mkdir()
  preds.mkdir()
  # a: 8x8, a 2x2 target at rows 2-3, cols 2-3.
  mask_a = np.zeros((8, 8))
  mask_a[2:4, 2:4] = 255
  _save(masks / 'a.png', mask_a)
  # Prediction a: the target at grey 200 (200/255 = 0.78 > 0.5), one pixel at 128
  # (0.502 > 0.5, a false alarm far from the target) and one at 127 (0.498, background).
  pred_a = np.zeros((8, 8))
  pred_a[2:4, 2:4] = 200
  pred_a[6, 6] = 128
  pred_a[0, 7] = 127
  _save(preds / 'a.png', pred_a)
  # b: 8 rows x 4 columns, a .bmp mask, anti-aliased: (5,1) = 200 is target,
  # (5,2) = 100 is not.
  mask_b = np.zeros((8, 4))
  mask_b[5, 1] = 200
  mask_b[5, 2] = 100
  _save(masks / 'b.bmp', mask_b)
  # Prediction b is an RGB PNG; white at (5,1) becomes grey 255.
  pred_b = np.zeros((8, 4, 3))
  pred_b[5, 1] = 255
  _save(preds / 'b.png', pred_b)
  return preds, masks


def test_scores_saved_predictions(folders):
  preds, masks = folders
  proc = _run(f'--pred_dir={preds}', f'--mask_dir={masks}')
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  # a: I = 4, U = 4 + 1 false-alarm pixel = 5, IoU 0.8; target matched; 1 FA pixel.
  # b: I = 1, U = 1, IoU 1; target matched; no false alarm.
  assert result['num_images'] == 2
  assert result['num_targets'] == 2
  assert result['miou'] == pytest.approx(5 / 6)  # (4 + 1) / (5 + 1)
  assert result['niou'] == pytest.approx(0.9)  # (0.8 + 1) / 2
  assert result['pd'] == pytest.approx(1.0)  # 2 / 2
  assert result['fa'] == pytest.approx(1 / 96)  # 1 pixel / (8*8 + 8*4)
  assert result['fa_e6'] == pytest.approx(1e6 / 96)  # 10416.67


def test_threshold_flag(folders):
  preds, masks = folders
  proc = _run(f'--pred_dir={preds}', f'--mask_dir={masks}', '--threshold=0.7')
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  # At 0.7 the 200s (0.78) and 255 stay targets, the 128 (0.50) drops out:
  # a: I = U = 4; b: I = U = 1 -> mIoU 5/5, no false alarm.
  assert result['miou'] == pytest.approx(1.0)
  assert result['fa'] == 0.0
  assert result['pd'] == pytest.approx(1.0)


def _assert_one_line_error(proc, *needles):
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]


def test_missing_prediction_is_one_line_naming_the_file(folders):
  preds, masks = folders
  (preds / 'b.png').unlink()
  proc = _run(f'--pred_dir={preds}', f'--mask_dir={masks}')
  _assert_one_line_error(proc, 'b.bmp', 'b.png')
  assert proc.stdout == ''


def test_size_mismatch_is_one_line_naming_the_file(folders):
  preds, masks = folders
  _save(preds / 'a.png', np.zeros((8, 9)))  # mask a is 8x8
  _assert_one_line_error(_run(f'--pred_dir={preds}', f'--mask_dir={masks}'),
                         'a.png', 'size mismatch')


def test_unreadable_prediction_is_one_line_naming_the_file(folders):
  preds, masks = folders
  (preds / 'a.png').write_bytes(b'not a png at all')
  _assert_one_line_error(_run(f'--pred_dir={preds}', f'--mask_dir={masks}'),
                         str(preds / 'a.png'))


def test_empty_mask_folder(tmp_path):
  (tmp_path / 'm').mkdir()
  (tmp_path / 'p').mkdir()
  _assert_one_line_error(_run(f'--pred_dir={tmp_path / "p"}', f'--mask_dir={tmp_path / "m"}'),
                         'no .png or .bmp masks')


@pytest.mark.parametrize('args, needle', [
    ((), 'nothing to evaluate'),
    (('--pred_dir=p',), 'together'),
    (('--workdir=w', '--pred_dir=p', '--mask_dir=m'), 'not both'),
])
def test_mode_must_be_given_exactly_once(args, needle):
  _assert_one_line_error(_run(*args), needle)


def test_non_binary_masks_warned_once(folders):
  preds, masks = folders
  # Mask a is 0/255 only; b holds 200 and 100 (anti-aliased). A third, 0/1 label mask
  # is kept as it is (not emptied by > 127) and counts as non-binary too.
  labels = np.zeros((8, 8))
  labels[2:4, 2:4] = 1
  _save(masks / 'c.png', labels)
  pred_c = np.zeros((8, 8))
  pred_c[2:4, 2:4] = 255
  _save(preds / 'c.png', pred_c)
  proc = _run(f'--pred_dir={preds}', f'--mask_dir={masks}')
  assert proc.returncode == 0, proc.stderr
  warnings = [l for l in proc.stderr.splitlines() if l.startswith('warning:')]
  assert warnings == ['warning: 2 of 3 masks hold values other than 0 and 255; they are '
                      'binarised at > 127, a 0/1 label image kept as it is (the field\'s '
                      'reference code keeps only pixels equal to 255)']
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['num_targets'] == 3 and result['pd'] == pytest.approx(1.0)


def test_16bit_prediction_is_one_line_naming_the_file(folders):
  preds, masks = folders
  Image.fromarray(np.zeros((8, 8), np.uint16)).save(preds / 'a.png')
  _assert_one_line_error(_run(f'--pred_dir={preds}', f'--mask_dir={masks}'),
                         str(preds / 'a.png'), '16/32-bit')
