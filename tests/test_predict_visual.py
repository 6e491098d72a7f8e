"""The visual comparison of ``predict --mask_dir`` (the paper's Fig. 5), without a trained model.

The picture is made by :func:`limijax.predict.comparison` from numpy arrays; the command's
wiring is tested with a stand-in for the trained run (a threshold on the image), and its
error for a missing mask through ``python -m limijax.predict``.
"""

import os
import shutil
import subprocess
import sys
import types

import numpy as np
from PIL import Image
import pytest

from limijax import predict
from limijax.errors import UserError

RED, BLUE, YELLOW = (255, 0, 0), (0, 0, 255), (255, 255, 0)
GREY = 50  # the background of the synthetic images


def _mask(shape, pixels):
  m = np.zeros(shape, dtype=bool)
  for r, c in pixels:
    m[r, c] = True
  return m


def _where(picture, colour):
  """Set of (row, col) where ``picture`` has exactly ``colour``."""
  return {tuple(p) for p in np.argwhere((picture == colour).all(axis=-1))}


def _block(r, c):
  """The 3x3 neighbourhood of (r, c): a one-pixel component's edge plus its ring."""
  return {(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)}


# 12 x 40 grey image. Hit: target and prediction at (5, 5). Miss: target (5, 20), no
# prediction near it. False alarm: prediction (5, 34), no target near it.
SHAPE = (12, 40)
GT = _mask(SHAPE, [(5, 5), (5, 20)])
PRED = _mask(SHAPE, [(5, 5), (5, 34)])
IMAGE = np.full(SHAPE, GREY, np.uint8)


def test_colours_of_hit_miss_and_false_alarm():
  picture = predict.comparison(IMAGE, PRED, GT)
  main = picture[:12, :40]
  # Each one-pixel component is outlined by itself plus its 8-connected ring: the 3x3
  # block around it, in its colour, and nothing else in that colour.
  assert _where(main, RED) == _block(5, 5)  # correct detection
  assert _where(main, BLUE) == _block(5, 20)  # missed target
  assert _where(main, YELLOW) == _block(5, 34)  # false alarm
  # Everything else is the image, unchanged: 40 * 12 - 3 * 9 = 453 grey pixels.
  assert np.count_nonzero((main == GREY).all(axis=-1)) == 12 * 40 - 3 * 9


def test_inset_panel_one_tile_per_target():
  picture = predict.comparison(IMAGE, PRED, GT)
  # Tiles: INSET_TILE = 16 * 4 = 64 px, framed 2 px: a box of 68, pitch 68 + gap 4 = 72.
  # Tiles per column: max(1, (12 - 4) // 72) = 1, so the 2 targets take 2 columns:
  # width 40 + 4 + 2 * 72 = 188; height max(12, 4 + 1 * 72) = 76.
  assert (predict.INSET_TILE, predict.INSET_BORDER, predict.INSET_GAP) == (64, 2, 4)
  assert picture.shape == (76, 188, 3)
  assert picture.dtype == np.uint8
  # Tile 0 is target 1 in label (raster) order, (5, 5), found: a red frame from
  # (top 4, left 40 + 4 = 44). Tile 1 is target 2, (5, 20), missed: blue frame at left 116.
  assert tuple(picture[4, 44]) == RED and tuple(picture[4 + 67, 44 + 67]) == RED
  assert tuple(picture[4, 116]) == BLUE and tuple(picture[4 + 67, 116 + 67]) == BLUE
  # Inside tile 0 (content from (6, 46)): the crop is rows 0..11 (the image is only 12
  # high) and cols 0..15 (a 16-px window centred on col 5, clamped at 0), zoomed 4x.
  # Pixel (5, 5) becomes the block rows 20..23, cols 20..23, outlined red from the inside,
  # so its corner (6 + 20, 46 + 20) is red and its inner (6 + 21, 46 + 21) still grey.
  assert tuple(picture[26, 66]) == RED
  assert tuple(picture[27, 67]) == (GREY,) * 3
  # Below the 12 * 4 = 48 zoomed rows the tile is panel background.
  assert tuple(picture[6 + 50, 46 + 10]) == predict.PANEL_COLOUR
  # Tile 1 (content from (6, 118)): cols 12..27 (centred on col 20: (20 + 21 - 16) // 2
  # = 12), so pixel (5, 20) is at tile col (20 - 12) * 4 = 32: blue at (26, 150).
  assert tuple(picture[26, 150]) == BLUE
  assert tuple(picture[27, 151]) == (GREY,) * 3


def test_no_target_means_no_panel():
  # Only the false alarm: the picture is the image's size, with the yellow outline.
  picture = predict.comparison(IMAGE, PRED & ~GT, np.zeros(SHAPE, bool))
  assert picture.shape == (12, 40, 3)
  assert _where(picture, YELLOW) == _block(5, 34)
  assert not _where(picture, RED) and not _where(picture, BLUE)


def test_colours_follow_the_metrics_matching():
  # The tie of tests/test_metrics.py: target centroid (2.8, 2.4), prediction (1, 0),
  # exactly 3 px apart, is no match: the target is missed (blue), the pixel a false
  # alarm (yellow), never red.
  target = [(2, 2), (3, 1), (3, 2), (3, 3), (3, 4)]
  image = np.full((4, 5), GREY, np.uint8)
  picture = predict.comparison(image, _mask((4, 5), [(1, 0)]), _mask((4, 5), target))
  assert tuple(picture[1, 0]) == YELLOW
  assert tuple(picture[3, 3]) == BLUE
  assert not _where(picture[:4, :5], RED)
  # The diagonal pair (0,1),(1,0), centroid (0.5, 0.5), 2.983 px away, matches: red.
  picture = predict.comparison(image, _mask((4, 5), [(0, 1), (1, 0)]), _mask((4, 5), target))
  assert tuple(picture[1, 0]) == RED and tuple(picture[0, 1]) == RED
  assert not _where(picture[:4, :5], YELLOW) and not _where(picture[:4, :5], BLUE)


def test_find_masks_by_stem_and_nuaa_suffix(tmp_path):
  masks = tmp_path / 'masks'
  masks.mkdir()
  for name in ('a.png', 'b_pixels0.bmp', 'notes.txt'):
    (masks / name).write_bytes(b'')
  files = [str(tmp_path / 'in' / 'a.png'), str(tmp_path / 'in' / 'b.jpg')]
  assert predict.find_masks(files, str(masks)) == [str(masks / 'a.png'),
                                                   str(masks / 'b_pixels0.bmp')]
  with pytest.raises(UserError, match='c.png'):
    predict.find_masks([str(tmp_path / 'in' / 'c.png')], str(masks))
  (masks / 'a_pixels0.png').write_bytes(b'')
  with pytest.raises(UserError, match='several masks'):
    predict.find_masks(files, str(masks))
  with pytest.raises(UserError, match='not a folder'):
    predict.find_masks(files, str(tmp_path / 'nowhere'))


def _save(path, array):
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


@pytest.fixture
def folders(tmp_path):
  """a: the hit / miss / false-alarm image; b: one found target, NUAA-named mask."""
  inputs, masks = tmp_path / 'in', tmp_path / 'masks'
  inputs.mkdir()
  masks.mkdir()
  a = IMAGE.copy()
  a[PRED] = 255  # the stand-in model predicts exactly the bright pixels
  _save(inputs / 'a.png', a)
  _save(masks / 'a.png', GT * 255)
  b = IMAGE.copy()
  b[2, 2] = 255
  _save(inputs / 'b.png', b)
  _save(masks / 'b_pixels0.png', _mask(SHAPE, [(2, 2)]) * 255)
  return inputs, masks


def _stand_in_run(monkeypatch, logit: float) -> None:
  """A stand-in for a trained run: logit +``logit`` where the image is brighter than 100,
  -``logit`` elsewhere (normalisation mean 0, std 1)."""
  from limijax import evaluation, workdir  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(workdir, 'load_run', lambda workdir: types.SimpleNamespace(
      model=None, params=None, model_state=None, mean=0.0, std=1.0))
  monkeypatch.setattr(evaluation, 'make_predict', lambda model: (
      lambda params, state, x: np.where(x > 100, logit, -logit)))


def test_predict_files_writes_the_comparison(folders, tmp_path, monkeypatch):
  inputs, masks = folders
  _stand_in_run(monkeypatch, 1.0)
  out = tmp_path / 'out'
  files = [str(inputs / 'a.png'), str(inputs / 'b.png')]
  assert predict.predict_files('unused', files, str(out), progress=False,
                               mask_dir=str(masks)) == ['a', 'b']
  with Image.open(out / 'a.png') as im:
    np.testing.assert_array_equal(np.asarray(im) > 0, PRED)
  with Image.open(out / 'a_overlay.png') as im:
    a = np.asarray(im)
  # As in test_inset_panel_one_tile_per_target: two tiles, 188 x 76.
  assert a.shape == (76, 188, 3)
  assert _where(a[:12, :40], RED) == _block(5, 5)
  assert _where(a[:12, :40], BLUE) == _block(5, 20)
  assert _where(a[:12, :40], YELLOW) == _block(5, 34)
  with Image.open(out / 'b_overlay.png') as im:
    b = np.asarray(im)
  # One target, found: one tile, width 40 + 4 + 72 = 116.
  assert b.shape == (76, 116, 3)
  assert _where(b[:12, :40], RED) == _block(2, 2)
  # Without masks the overlay is the plain one, at the image's size.
  plain = tmp_path / 'plain'
  predict.predict_files('unused', files[:1], str(plain), progress=False)
  with Image.open(plain / 'a_overlay.png') as im:
    assert im.size == (40, 12)


def test_mask_of_another_aspect_stops_before_the_model(folders, tmp_path):
  inputs, masks = folders
  _save(masks / 'a.png', np.zeros((12, 41)))
  # No stand-in run here: the check must come before the run is loaded.
  with pytest.raises(UserError, match=r'a\.png is 41x12 for its 40x12 image .*aspect'):
    predict.predict_files('unused', [str(inputs / 'a.png')], str(tmp_path / 'out'),
                          progress=False, mask_dir=str(masks))
  assert not (tmp_path / 'out').exists()


def test_mask_at_another_scale_is_resized_with_a_warning(folders, tmp_path, monkeypatch,
                                                          capsys):
  inputs, masks = folders
  _stand_in_run(monkeypatch, 1.0)
  files = [str(inputs / 'a.png')]
  predict.predict_files('unused', files, str(tmp_path / 'same'), progress=False,
                        mask_dir=str(masks))
  # The same mask at 3x the image's size: the same comparison picture, one warning line.
  _save(masks / 'a.png', np.kron(GT * 255, np.ones((3, 3))))
  predict.predict_files('unused', files, str(tmp_path / 'scaled'), progress=False,
                        mask_dir=str(masks))
  warnings = [l for l in capsys.readouterr().err.splitlines() if 'is 120x36 for its 40x12' in l]
  assert len(warnings) == 1 and 'resized to the image' in warnings[0]
  for name in ('a.png', 'a_overlay.png'):
    assert ((tmp_path / 'same' / name).read_bytes() ==
            (tmp_path / 'scaled' / name).read_bytes()), name


def test_missing_mask_is_one_line_through_the_command(folders, tmp_path):
  inputs, masks = folders
  _save(inputs / 'c.png', IMAGE)  # no mask c.png or c_pixels0.png
  out = tmp_path / 'out'
  proc = subprocess.run(
      [sys.executable, '-m', 'limijax.predict', f'--workdir={tmp_path / "no_run"}',
       f'--input={inputs}', f'--out={out}', f'--mask_dir={masks}'],
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr
  assert str(inputs / 'c.png') in lines[0] and 'no mask' in lines[0]
  assert not out.exists()


def test_probability_pngs_read_back_as_the_masks(folders, tmp_path, monkeypatch):
  from limijax import evaluate  # pylint: disable=g-import-not-at-top
  # Exactly the mask at threshold 0.5, logit 0 and the smallest positive logits included.
  logits = np.concatenate([np.array([0.0, -0.0, 1e-7, -1e-7, 0.004, -0.004], np.float32),
                           np.random.default_rng(0).normal(0, 3, 10_000).astype(np.float32)])
  v = predict.probability_png(logits)
  np.testing.assert_array_equal(v / 255 > 0.5, logits > 0)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  assert np.abs(v / 255 - p).max() <= 0.5 / 255 + 1e-12  # round(255 p)
  # Written by predict --probs under OUT/probs, scored by evaluate --pred_dir.
  inputs, masks = folders
  _stand_in_run(monkeypatch, 3.0)
  out = tmp_path / 'out'
  files = [str(inputs / 'a.png'), str(inputs / 'b.png')]
  predict.predict_files('unused', files, str(out), progress=False, mask_dir=str(masks),
                        probs=True)
  assert sorted(os.listdir(out / 'probs')) == ['a.png', 'b.png']
  with Image.open(out / 'probs' / 'a.png') as im:
    a = np.asarray(im)
  assert a.dtype == np.uint8 and set(np.unique(a)) == {12, 243}  # round(255 sigmoid(-+3))
  scored = evaluate.evaluate_folders(str(out / 'probs'), str(masks), progress=False)
  (tmp_path / 'binary').mkdir()
  for name in ('a.png', 'b.png'):
    shutil.copy(out / name, tmp_path / 'binary' / name)
  from_masks = evaluate.evaluate_folders(str(tmp_path / 'binary'), str(masks), progress=False)
  assert scored == from_masks and scored['num_matched_targets'] == 2
