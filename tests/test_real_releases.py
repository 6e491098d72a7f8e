"""Quirks of real dataset releases: masks at another scale, split lists from elsewhere,
small images padded in training crops, a summary of many image sizes, quiet output.

The fixtures are built here (NUAA-SIRST's own files are never read by the tests).
"""

import json
import logging
import os
import subprocess
import sys

from absl import logging as absl_logging
import numpy as np
from PIL import Image
import pytest

from limijax import data
from limijax import defaults
from limijax import image_io
from limijax import input_pipeline
from limijax import its
from limijax.data import report
from limijax.errors import ConfigError, QuietLibraries, UserError
from tiny_run import assert_one_line_error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _image(k, h=22, w=33):
  return ((np.arange(h * w).reshape(h, w) * 5 + 17 * k) % 256).astype(np.uint8)


def _mask(h=22, w=33, box=(4, 6, 8, 12)):
  m = np.zeros((h, w), np.uint8)
  y0, y1, x0, x1 = box
  m[y0:y1, x0:x1] = 255
  return m


def _nuaa(root, n=6, lists=True):
  """A NUAA-SIRST-like folder: Misc_<k>.png images, Misc_<k>_pixels0.png masks, idx_427."""
  ids = [f'Misc_{k}' for k in range(1, n + 1)]
  for k, id_ in enumerate(ids):
    _write(os.path.join(root, 'images', id_ + '.png'), _image(k))
    _write(os.path.join(root, 'masks', id_ + '_pixels0.png'), _mask())
  if lists:
    os.makedirs(os.path.join(root, 'idx_427'), exist_ok=True)
    with open(os.path.join(root, 'idx_427', 'trainval.txt'), 'w') as f:
      f.write('\n'.join(ids[:4]) + '\n')
    with open(os.path.join(root, 'idx_427', 'test.txt'), 'w') as f:
      f.write('\n'.join(ids[4:]) + '\n')
  return ids


def _cfg(tmp_path, root, **overrides):
  cfg = defaults.base_config().data
  cfg.name, cfg.root, cfg.data_dir = 'nuaa', root, str(tmp_path / 'prepared')
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def _run(*args):
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


# --------------------------------------------------------------- masks at another scale
def test_mask_of_the_same_aspect_at_another_size_is_resized_with_one_warning(
    tmp_path, caplog):
  root = str(tmp_path / 'nuaa')
  _nuaa(root)
  # Misc_2's mask at 2x the image's size (66x44 for 33x22): the release's Misc_111 quirk.
  big = np.kron(_mask(), np.ones((2, 2), np.uint8))
  _write(os.path.join(root, 'masks', 'Misc_2_pixels0.png'), big)
  rep = data.inspect(root)
  assert rep['usable'], rep['problems']
  lines = [w for w in rep['warnings'] if 'Misc_2_pixels0.png' in w]
  assert len(lines) == 1
  assert '66x44 for its 33x22 image' in lines[0] and 'nearest neighbour' in lines[0]

  with caplog.at_level(logging.WARNING):
    dataset = data.load_dataset(_cfg(tmp_path, root))
  assert sum('Misc_2_pixels0.png' in r.getMessage() for r in caplog.records) == 1
  ids = list(dataset.train.ids)
  record = dataset.train[ids.index('Misc_2')]
  assert record['image'].shape == record['mask'].shape == (22, 33)
  np.testing.assert_array_equal(record['mask'], (_mask() > 0).astype(np.uint8))
  # Loaded again from the prepared copy: the warning again (every training log shows it).
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    data.load_dataset(_cfg(tmp_path, root))
  assert sum('Misc_2_pixels0.png' in r.getMessage() for r in caplog.records) == 1
  # Read straight from the folder (the preview's source): resized too.
  folder = data.folder_dataset(root)
  record = folder.train[list(folder.train.ids).index('Misc_2')]
  assert record['mask'].shape == (22, 33)


def test_fit_mask_rule():
  mask = np.zeros((400, 592), np.uint8)
  mask[100:104, 200:204] = 1
  out = image_io.fit_mask(mask, (220, 325), 'm.png', 'i.png')  # NUAA-SIRST's Misc_111
  assert out.shape == (220, 325) and out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
  assert image_io.mask_fits((400, 592), (220, 325))  # 1.480 against 1.477
  assert image_io.mask_fits((100, 101), (100, 100))  # 1 % off: still the same picture
  assert not image_io.mask_fits((100, 103), (100, 100))  # 3 % off: another picture
  with pytest.raises(UserError, match=r'm\.png is 103x100 for its 100x100 image i\.png'):
    image_io.fit_mask(np.zeros((100, 103), np.uint8), (100, 100), 'm.png', 'i.png')


def test_mask_of_another_aspect_is_refused_in_one_line_and_nothing_is_written(tmp_path):
  root = str(tmp_path / 'nuaa')
  _nuaa(root)
  _write(os.path.join(root, 'masks', 'Misc_3_pixels0.png'), _mask(22, 40))
  with pytest.raises(UserError, match=r'Misc_3_pixels0\.png is 40x22 for its 33x22 image'):
    data.load_dataset(_cfg(tmp_path, root))
  assert not (tmp_path / 'prepared' / 'nuaa_sirst').exists()
  proc = _run('-m', 'limijax.data', f'--root={root}')
  assert_one_line_error(proc, 'Misc_3_pixels0.png', 'aspect ratios differ')
  assert 'usable:    no' in proc.stdout
  # The training command: refused before a workdir is made.
  workdir = tmp_path / 'w'
  proc = _run('-m', 'limijax.main', f'--config={REPO}/configs/nuaa.py', f'--workdir={workdir}',
              f'--config.data.root={root}', f'--config.data.data_dir={tmp_path / "prepared"}')
  assert_one_line_error(proc, 'Misc_3_pixels0.png')
  assert not workdir.exists()


# --------------------------------------------------------------------- split lists
def _lists(folder, train, test, train_name='train.txt', newline='\r\n'):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, train_name), 'wb') as f:
    f.write(newline.join(train).encode() + newline.encode())
  with open(os.path.join(folder, 'test.txt'), 'wb') as f:
    f.write(newline.join(test).encode())  # no final newline


@pytest.mark.parametrize('train_name', ['train.txt', 'trainval.txt'])
def test_split_dir_replaces_the_layouts_own_lists(tmp_path, train_name):
  root = str(tmp_path / 'nuaa')
  ids = _nuaa(root, n=10)
  other = str(tmp_path / 'lists' / '50_50')
  _lists(other, ids[5:], ids[:5], train_name)  # the other way round from idx_427
  rep = data.inspect(root, split_dir=other, val_fraction=0.2)
  assert rep['usable'], rep['problems']
  assert rep['splits'] == {'train': 4, 'val': 1, 'test': 5}
  dataset = data.load_dataset(_cfg(tmp_path, root, split_dir=other))
  assert sorted(dataset.test.ids) == sorted(ids[:5])
  assert sorted(dataset.train.ids + dataset.val.ids) == sorted(ids[5:])
  # Without it the layout's own lists again.
  dataset = data.load_dataset(_cfg(tmp_path, root))
  assert sorted(dataset.test.ids) == sorted(ids[4:])


def test_split_dir_problems_are_one_line_each(tmp_path):
  root = str(tmp_path / 'nuaa')
  ids = _nuaa(root, n=6)
  lists = str(tmp_path / 'lists')
  _lists(lists, ids[:3] + ['Misc_99'], ids[3:])
  with pytest.raises(UserError, match=r'train\.txt: 1 id\(s\) with no image .*Misc_99'):
    data.load_dataset(_cfg(tmp_path, root, split_dir=lists))
  empty = str(tmp_path / 'empty')
  os.makedirs(empty)
  with pytest.raises(UserError, match=r'split_dir: .*empty has no trainval\.txt or train\.txt '
                     r'and test\.txt'):
    data.load_dataset(_cfg(tmp_path, root, split_dir=empty))
  with pytest.raises(UserError, match='is not a folder'):
    data.load_dataset(_cfg(tmp_path, root, split_dir=str(tmp_path / 'nowhere')))
  config = defaults.base_config()
  config.data.name, config.data.root, config.data.split_dir = 'nuaa', root, lists
  config.data.split = 'random'
  with pytest.raises(ConfigError, match='data.split_dir: split lists need data.split=standard'):
    defaults.checked(config)
  proc = _run('-m', 'limijax.data', f'--root={root}', f'--split_dir={lists}')
  assert_one_line_error(proc, 'Misc_99')


# ---------------------------------------------------------------- the report's sizes
def test_many_sizes_are_summarised_and_json_keeps_them_all():
  counts = {f'{100 + k}x{50 + k}': 1 for k in range(40)}
  counts = {'320x240': 5, '256x200': 3, **counts}
  line = report.format_sizes(counts)
  assert line.startswith('42 distinct, smallest 100x50, largest 320x240; most common '
                         '320x240 (5), 256x200 (3), ')
  assert len(line) < 200
  assert report.format_sizes({'64x64': 3, '32x48': 1}) == '64x64 (3), 32x48 (1)'


# ------------------------------------------------------------ ITS and padded crops
def test_its_paints_on_image_pixels_only_never_on_the_padding():
  cfg = {'enabled': True, 'prob': 1.0, 'max_targets': 3}
  crop, transform = input_pipeline.CropAndFlip(64, 0.5, 77.0, flips=True), its.ITS(cfg)
  painted = 0
  for s in range(40):
    rng = np.random.default_rng(s)
    h, w = int(rng.integers(12, 60)), int(rng.integers(12, 60))  # smaller than the crop
    image = rng.uniform(40, 90, (h, w)).astype(np.float32)
    element = crop.random_map({'image': image, 'mask': np.zeros((h, w), np.uint8)},
                              np.random.default_rng(s))
    valid = element['valid']
    assert valid.sum() == h * w
    out = transform.random_map(element, np.random.default_rng(100 + s))
    assert not out['mask'][~valid].any()
    np.testing.assert_array_equal(out['image'][~valid], 77.0)  # the padding untouched
    painted += int(out['mask'].sum())
  assert painted > 100  # pseudo targets were painted, inside the images
  # A crop wholly inside its image has no valid plane, and ITS draws as before.
  image = np.random.default_rng(1).uniform(0, 255, (80, 80)).astype(np.float32)
  element = crop.random_map({'image': image, 'mask': np.zeros((80, 80), np.uint8)},
                            np.random.default_rng(0))
  assert 'valid' not in element
  full = np.ones((64, 64), bool)
  a = its.add_pseudo_targets(element['image'], element['mask'], np.random.default_rng(3), cfg)
  b = its.add_pseudo_targets(element['image'], element['mask'], np.random.default_rng(3), cfg,
                             valid=full)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])


# ---------------------------------------------------------------------- quiet output
def _record(level, pathname, msg):
  return logging.LogRecord('absl', level, pathname, 1, msg, None, None)


def test_other_libraries_info_lines_are_filtered_ours_kept():
  quiet = QuietLibraries()
  ours = os.path.join(REPO, 'limijax', 'train.py')
  tfds_file = os.path.join(os.path.dirname(absl_logging.__file__), 'dataset_info.py')
  assert quiet.filter(_record(logging.INFO, ours, 'epoch 1: val mIoU 0.5'))
  assert not quiet.filter(_record(logging.INFO, tfds_file, 'Load dataset info from /x'))
  assert quiet.filter(_record(logging.WARNING, tfds_file, 'something is wrong'))
  assert not quiet.filter(_record(logging.WARNING, tfds_file,
                                  'OpenCV is not installed. We recommend using OpenCV'))
  assert not quiet.filter(_record(logging.WARNING, tfds_file,
                                  'Using custom data configuration: FolderConfig(...)'))


def test_data_command_output_is_ours_only(tmp_path):
  root = str(tmp_path / 'nuaa')
  _nuaa(root)
  proc = _run('-m', 'limijax.data', f'--root={root}', '--json')
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout.splitlines()[-1])['usable']
  assert 'dataset_info.py' not in proc.stderr and 'OpenCV' not in proc.stderr
