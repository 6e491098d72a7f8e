"""Dataset folders: layouts, quirks, splits, normalisation, prepared data and the CLI.

Every fixture is a handful of tiny images written into tmp_path in one of the layouts
users bring, with the quirks found in the wild.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
import types

import numpy as np
from PIL import Image
import pytest

import limijax
from limijax import data
from limijax import defaults
from limijax import image_io
from limijax.errors import UserError

H, W = 16, 20  # height, width of fixture images


def grey(k):
  """A deterministic, id-specific grey image."""
  return ((np.arange(H * W).reshape(H, W) * 7 + k * 13) % 256).astype(np.uint8)


def soft_mask(k):
  """A 0/255 target with anti-aliased edge pixels: 200 must become 1, 60 must become 0."""
  m = np.zeros((H, W), np.uint8)
  r, c = 2 + k % 8, 3 + k % 10
  m[r:r + 3, c:c + 3] = 255
  m[r - 1, c + 1] = 200
  m[r + 3, c + 1] = 60
  return m


def binary(k):
  return (soft_mask(k) > 127).astype(np.uint8)


def write(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  im = Image.fromarray(array)
  if mode:
    im = im.convert(mode)
  im.save(path)


def write_lines(path, ids, newline='\n', final=True):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  text = newline.join(ids) + (newline if final else '')
  with open(path, 'wb') as f:
    f.write(text.encode())


# layout -> (image dir, mask dir, id pattern, image ext, image mode, mask ext, mask suffix)
SPECS = {
    'basicirstd': ('images', 'masks', '{:06d}', '.png', 'RGB', '.png', ''),  # NUDT: RGB grey
    'dnanet': ('images', 'masks', '{:06d}', '.png', None, '.bmp', ''),
    'irstd1k': ('IRSTD1k_Img', 'IRSTD1k_Label', 'XDU{}', '.png', None, '.png', ''),
    'mshnet': ('images', 'masks', 'img{}', '.bmp', None, '.png', ''),
    'nuaa': ('images', 'masks', 'Misc_{}', '.png', None, '.png', '_pixels0'),
    'folder': ('images', 'masks', 'f{:02d}', '.png', None, '.bmp', ''),
}


def make_layout(root, kind, n=10):
  """Writes ``n`` examples in ``kind``'s layout; ids[:n//2] train, the rest test."""
  image_dir, mask_dir, pattern, ext, mode, mask_ext, suffix = SPECS[kind]
  ids = [pattern.format(k + 1) for k in range(n)]
  for k, id_ in enumerate(ids):
    write(os.path.join(root, image_dir, id_ + ext), grey(k), mode)
    write(os.path.join(root, mask_dir, id_ + suffix + mask_ext), soft_mask(k))
  train, test = ids[:n // 2], ids[n // 2:]
  if kind == 'basicirstd':
    write_lines(os.path.join(root, 'img_idx', 'train_NUDT-SIRST.txt'), train, '\r\n')
    write_lines(os.path.join(root, 'img_idx', 'test_NUDT-SIRST.txt'), test, '\n', final=False)
  elif kind == 'dnanet':
    write_lines(os.path.join(root, '50_50', 'train.txt'), train, '\r\n', final=False)
    write_lines(os.path.join(root, '50_50', 'test.txt'), test + [''], '\r\n')
  elif kind in ('irstd1k', 'mshnet'):
    write_lines(os.path.join(root, 'trainval.txt'), train, '\r\n')
    write_lines(os.path.join(root, 'test.txt'), test, '\n', final=False)
  elif kind == 'nuaa':
    idx = os.path.join(root, 'idx_427')
    write_lines(os.path.join(idx, 'trainval.txt'), train, '\r\n')
    write_lines(os.path.join(idx, 'test.txt'), test)
    # train/val are the finer split of trainval: not the standard split
    write_lines(os.path.join(idx, 'train.txt'), train[:2])
    write_lines(os.path.join(idx, 'val.txt'), train[2:])
  return ids, train, test


def data_cfg(tmp_path, **overrides):
  cfg = defaults.base_config().data
  cfg.data_dir = str(tmp_path / 'prepared')
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


# ------------------------------------------------------------------ reading, layouts


def test_split_file_quirks(tmp_path):
  path = tmp_path / 'split.txt'
  path.write_bytes(b'\xef\xbb\xbfa1\r\n  b2 \r\n\r\nc3.png\nc3\rd4')
  assert data.read_split_file(str(path)) == ['a1', 'b2', 'c3', 'd4']


@pytest.mark.parametrize('kind', sorted(SPECS))
def test_layout_detected_and_counted(tmp_path, kind):
  root = str(tmp_path / kind)
  ids, train, test = make_layout(root, kind)
  report = data.inspect(root)
  assert report['layout'] == kind
  assert report['problems'] == []
  assert report['usable']
  assert report['num_images'] == 10
  assert report['image_sizes'] == {f'{W}x{H}': 10}
  if kind == 'folder':  # no split files: random 8:2, then 20% of train to val
    assert report['split'] == 'random'
    assert report['splits'] == {'train': 6, 'val': 2, 'test': 2}
  else:  # 5 / 5 from the files, round(5 * 0.2) = 1 held out
    assert report['split'] == 'standard'
    assert report['splits'] == {'train': 4, 'val': 1, 'test': 5}
  expected_channels = {'3': 10} if kind == 'basicirstd' else {'1': 10}
  assert report['channels'] == expected_channels


def test_nuaa_uses_trainval_and_pixels0_masks(tmp_path):
  root = str(tmp_path / 'sirst')
  _, train, test = make_layout(root, 'nuaa')
  plan = data.plan.make_plan(root, '', 'standard')
  assert plan.standard == {'train': train, 'test': test}
  assert plan.items['Misc_1'][1] == os.path.join('masks', 'Misc_1_pixels0.png')


def test_basicirstd_picks_split_files_by_name(tmp_path):
  root = str(tmp_path / 'mixed')
  make_layout(root, 'basicirstd')
  write_lines(os.path.join(root, 'img_idx', 'train_IRSTD-1K.txt'), ['000001'])
  write_lines(os.path.join(root, 'img_idx', 'test_IRSTD-1K.txt'), ['000002'])
  ambiguous = data.inspect(root)
  assert not ambiguous['usable']
  assert 'data.name' in ambiguous['problems'][0]
  chosen = data.inspect(root, name='irstd1k')
  assert chosen['split_files']['train'] == os.path.join('img_idx', 'train_IRSTD-1K.txt')
  assert chosen['splits']['test'] == 1


def test_pixels_rgb_grey_and_mask_binarisation(tmp_path):
  root = str(tmp_path / 'NUDT-SIRST')
  ids, _, _ = make_layout(root, 'basicirstd')
  ds = data.folder_dataset(root, split='standard')
  ex = ds.test[0]
  k = ids.index(ex['id'])
  np.testing.assert_array_equal(ex['image'], grey(k))  # RGB file, grey content kept exactly
  np.testing.assert_array_equal(ex['mask'], binary(k))
  assert ex['image'].dtype == np.uint8 and ex['mask'].dtype == np.uint8
  assert ex['mask'].sum() == 10  # 3x3 target + the 200 edge pixel, not the 60 one


def test_bmp_masks_and_zero_one_masks(tmp_path):
  path = str(tmp_path / 'm.bmp')
  write(path, soft_mask(1))
  np.testing.assert_array_equal(data.read_mask(path), binary(1))
  path01 = str(tmp_path / 'm01.png')
  write(path01, binary(2))  # a 0/1 label file must not become all background
  np.testing.assert_array_equal(data.read_mask(path01), binary(2))


def test_non_binary_mask_rejected(tmp_path):
  path = str(tmp_path / 'grey.png')
  write(path, grey(3))
  with pytest.raises(UserError, match='grey.png: not a binary mask'):
    data.read_mask(path)


# -------------------------------------------------------------- splits, normalisation


def test_split_sizes_and_determinism():
  ids = [f'{k:03d}' for k in range(50)]
  a = data.split_ids(ids, None, 'random', split_seed=3, test_fraction=0.2, val_fraction=0.2)
  b = data.split_ids(ids, None, 'random', split_seed=3, test_fraction=0.2, val_fraction=0.2)
  c = data.split_ids(ids, None, 'random', split_seed=4, test_fraction=0.2, val_fraction=0.2)
  assert {k: len(v) for k, v in a.items()} == {'train': 32, 'val': 8, 'test': 10}
  assert a == b
  assert a['test'] != c['test'] and a['val'] != c['val']
  assert sorted(a['train'] + a['val'] + a['test']) == ids
  assert all(v == sorted(v) for v in a.values())
  # the order of the input ids does not matter
  assert data.split_ids(ids[::-1], None, 'random', split_seed=3, test_fraction=0.2,
                        val_fraction=0.2) == a

  standard = {'train': ids[:30], 'test': ids[30:]}
  s = data.split_ids(ids, standard, 'standard', split_seed=3, test_fraction=0.2,
                     val_fraction=0.2)
  assert s['test'] == ids[30:]
  assert len(s['val']) == 6 and len(s['train']) == 24
  assert sorted(s['train'] + s['val']) == ids[:30]
  s2 = data.split_ids(ids, standard, 'standard', split_seed=9, test_fraction=0.2,
                      val_fraction=0.2)
  assert s2['test'] == s['test'] and s2['val'] != s['val']


def test_normalisation_is_mean_of_per_image_stats(tmp_path):
  root = str(tmp_path / 'norm')
  flat = np.full((H, W), 10, np.uint8)  # mean 10, std 0
  halves = np.zeros((H, W), np.uint8)
  halves[:, W // 2:] = 100  # mean 50, std 50
  other = np.full((H, W), 250, np.uint8)  # test image: must not count
  for id_, image in (('a', flat), ('b', halves), ('c', other)):
    write(os.path.join(root, 'images', id_ + '.png'), image)
    write(os.path.join(root, 'masks', id_ + '.png'), soft_mask(0))
  write_lines(os.path.join(root, 'trainval.txt'), ['a', 'b'])
  write_lines(os.path.join(root, 'test.txt'), ['c'])
  report = data.inspect(root, val_fraction=0.0)
  # per-image convention: (10 + 50) / 2 and (0 + 50) / 2 (pooled pixels would give 30 / 40.6)
  assert report['mean'] == pytest.approx(30.0)
  assert report['std'] == pytest.approx(25.0)
  ds = data.load_dataset(data_cfg(tmp_path, name='folder', root=root, val_fraction=0.0))
  assert (ds.mean, ds.std) == (pytest.approx(30.0), pytest.approx(25.0))


# --------------------------------------------------------------- prepared TFDS data


def test_load_prepares_once_then_reuses(tmp_path, monkeypatch):
  from limijax import tfds_builders
  root = str(tmp_path / 'IRSTD-1k')
  ids, train, test = make_layout(root, 'irstd1k')
  cfg = data_cfg(tmp_path, name='irstd1k', root=root)
  ds = data.load_dataset(cfg)
  assert ds.layout == 'irstd1k' and ds.name == 'irstd1k'
  assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 1, 5)
  assert list(ds.test.ids) == sorted(test)
  assert sorted(ds.train.ids + ds.val.ids) == sorted(train)
  assert ds.prepared_dir.startswith(str(tmp_path / 'prepared' / 'irstd1k'))
  assert os.path.isfile(os.path.join(ds.prepared_dir, tfds_builders.META_FILE))
  for src in (ds.train, ds.val, ds.test):
    for i in range(len(src)):
      ex = src[i]
      k = ids.index(ex['id'])
      assert ex['id'] == src.ids[i]
      np.testing.assert_array_equal(ex['image'], grey(k))
      np.testing.assert_array_equal(ex['mask'], binary(k))
  batch = ds.test.__getitems__([4, 0])
  assert [b['id'] for b in batch] == [ds.test.ids[4], ds.test.ids[0]]
  clone = pickle.loads(pickle.dumps(ds.test))  # Grain sends sources to workers
  np.testing.assert_array_equal(clone[2]['image'], ds.test[2]['image'])
  with pytest.raises(IndexError):
    ds.test[5]

  def forbidden(*args, **kwargs):
    raise AssertionError('prepared data was rebuilt')

  with monkeypatch.context() as m:
    m.setattr(tfds_builders, 'prepare', forbidden)
    m.setattr(data.plan, 'check_files', forbidden)
    again = data.load_dataset(cfg)  # unchanged folder: reused without reading images
    assert again.prepared_dir == ds.prepared_dir
    assert again.test.ids == ds.test.ids and again.mean == ds.mean
    other_seed = data.load_dataset(data_cfg(tmp_path, name='irstd1k', root=root, split_seed=7))
    assert other_seed.prepared_dir == ds.prepared_dir  # the split is not baked in

  # The same files in another folder: a different copy, never the first one's.
  moved = str(tmp_path / 'elsewhere' / 'IRSTD-1k')
  shutil.copytree(root, moved)
  assert data.load_dataset(data_cfg(tmp_path, name='irstd1k', root=moved)).prepared_dir \
      != ds.prepared_dir

  # An edited image changes the fingerprint, and the new pixels are served.
  target = os.path.join(root, 'IRSTD1k_Img', ds.test.ids[0] + '.png')
  write(target, np.full((H, W), 77, np.uint8))
  os.utime(target, ns=(1, 1))
  edited = data.load_dataset(cfg)
  assert edited.prepared_dir != ds.prepared_dir
  assert (edited.test[0]['image'] == 77).all()


def test_synthetic_written_once_as_folder(tmp_path, monkeypatch):
  calls = []

  def scene(index, size, seed):
    calls.append((index, size, seed))
    image = np.random.default_rng([seed, index]).integers(0, 200, (size, size), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[index % size, 1] = 1
    return f's{index:03d}', image, mask

  stand_in = types.ModuleType('limijax.synthetic')
  stand_in.scene = scene
  monkeypatch.setitem(sys.modules, 'limijax.synthetic', stand_in)
  monkeypatch.setattr(limijax, 'synthetic', stand_in, raising=False)
  cfg = data_cfg(tmp_path, name='synthetic', num_images=10, synthetic_size=16, split_seed=5)
  ds = data.load_dataset(cfg)
  assert sorted(calls) == [(k, 16, 5) for k in range(10)]  # each image drawn once
  assert ds.layout == 'folder' and ds.split == 'random'
  assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 2, 2)
  expected = dict((i, (im, m)) for i, im, m in (scene(k, 16, 5) for k in range(10)))
  ex = ds.val[1]
  np.testing.assert_array_equal(ex['image'], expected[ex['id']][0])
  np.testing.assert_array_equal(ex['mask'], expected[ex['id']][1])
  del calls[:]
  again = data.load_dataset(cfg)
  assert not calls  # the folder is reused: nothing drawn again
  assert again.prepared_dir == ds.prepared_dir and again.val.ids == ds.val.ids


def test_synthetic_with_the_real_generator(tmp_path):
  from limijax import synthetic
  ds = data.load_dataset(data_cfg(tmp_path, name='synthetic', num_images=6, synthetic_size=32))
  assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 1, 1)
  expected = {i: (im, m) for i, im, m in synthetic.generate(6, 32, 0)}
  ex = ds.test[0]
  np.testing.assert_array_equal(ex['image'], expected[ex['id']][0])
  np.testing.assert_array_equal(ex['mask'], expected[ex['id']][1])


def test_load_errors_name_the_problem(tmp_path):
  root = str(tmp_path / 'broken')
  make_layout(root, 'mshnet')
  os.remove(os.path.join(root, 'masks', 'img3.png'))
  with pytest.raises(UserError, match=r'img3\.bmp: no mask'):
    data.load_dataset(data_cfg(tmp_path, name='folder', root=root))
  with pytest.raises(UserError, match='data.root: not set'):
    data.load_dataset(data_cfg(tmp_path, name='nudt', root=''))
  with pytest.raises(UserError, match='data.name'):
    data.load_dataset(data_cfg(tmp_path, name='cifar', root=root))
  plain = str(tmp_path / 'plain')
  make_layout(plain, 'folder')
  with pytest.raises(UserError, match='no split files for the standard split'):
    data.load_dataset(data_cfg(tmp_path, name='folder', root=plain, split='standard'))
  mismatch = str(tmp_path / 'mismatch')
  make_layout(mismatch, 'folder')
  write(os.path.join(mismatch, 'masks', 'f04.bmp'), np.zeros((H + 2, W), np.uint8))
  with pytest.raises(UserError, match=r'f04\.bmp is 20x18 for its 20x16 image .*aspect'):
    data.load_dataset(data_cfg(tmp_path, name='folder', root=mismatch, split='random'))


# ---------------------------------------------------------------------------- CLI


def run_cli(*args):
  return subprocess.run([sys.executable, '-m', 'limijax.data', *args], capture_output=True,
                        text=True, timeout=60)


def test_cli_reports_json(tmp_path):
  root = str(tmp_path / 'sirst')
  make_layout(root, 'nuaa')
  out = run_cli(f'--root={root}', '--json', '--split_seed=2')
  assert out.returncode == 0, out.stderr
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report['layout'] == 'nuaa'
  assert report['splits'] == {'train': 4, 'val': 1, 'test': 5}
  assert report['problems'] == []
  assert 'layout:    nuaa' in out.stdout
  random = run_cli(f'--root={root}', '--json', '--split=random')
  assert json.loads(random.stdout.strip().splitlines()[-1])['splits'] == \
      {'train': 6, 'val': 2, 'test': 2}


def test_cli_preview(tmp_path):
  root = str(tmp_path / 'ds')
  make_layout(root, 'mshnet')
  preview = tmp_path / 'preview.png'
  out = run_cli(f'--root={root}', f'--preview={preview}', '--image_size=16', '--json')
  assert out.returncode == 0, out.stderr
  with Image.open(preview) as im:
    assert im.width > 16 and im.height > 16
  assert json.loads(out.stdout.strip().splitlines()[-1])['usable']


def _missing_mask(root):
  os.remove(os.path.join(root, 'masks', 'img2.png'))
  return 'img2.bmp'


def _truncated_image(root):
  path = os.path.join(root, 'images', 'img5.bmp')
  with open(path, 'r+b') as f:
    f.truncate(60)
  return 'img5.bmp'


def _size_mismatch(root):
  write(os.path.join(root, 'masks', 'img7.png'), np.zeros((H, W + 4), np.uint8))
  return 'img7.png'


def _empty_split(root):
  write_lines(os.path.join(root, 'test.txt'), ['', ' '], '\r\n')
  return 'test.txt'


def _unknown_id(root):
  write_lines(os.path.join(root, 'trainval.txt'), ['img1', 'ghost'])
  return 'trainval.txt'


def _grey_mask(root):
  write(os.path.join(root, 'masks', 'img4.png'), grey(4))
  return 'img4.png'


def _no_layout(root):
  shutil.rmtree(os.path.join(root, 'masks'))
  return os.path.basename(root)


@pytest.mark.parametrize('damage', [_missing_mask, _truncated_image, _size_mismatch,
                                    _empty_split, _unknown_id, _grey_mask, _no_layout])
def test_cli_bad_input_fails_with_one_line(tmp_path, damage):
  root = str(tmp_path / 'ds')
  make_layout(root, 'mshnet')
  named = damage(root)
  out = run_cli(f'--root={root}', '--json')
  assert out.returncode == 2
  assert 'Traceback' not in out.stderr + out.stdout
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and named in lines[0], out.stderr
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report['problems'] and named in report['problems'][0]


# ------------------------------------------------- mask values, 16-bit, where no dataset is


def _clean_masks(root, ids):
  """Rewrites the masks of ``ids`` as pure 0/255 files (the fixture's hold 200 and 60)."""
  for k, id_ in enumerate(ids):
    write(os.path.join(root, 'masks', id_ + '.bmp'), binary(k) * 255)


def test_non_binary_masks_counted_once_in_report_and_cli(tmp_path):
  root = str(tmp_path / 'ds')
  ids, _, _ = make_layout(root, 'folder')
  _clean_masks(root, ids[:3])
  report = data.inspect(root)
  assert report['non_binary_masks'] == 7
  lines = [w for w in report['warnings'] if 'other than 0 and 255' in w]
  assert lines == [image_io.non_binary_mask_warning(7, 10)]
  assert lines[0].startswith('7 of 10 masks hold values other than 0 and 255')
  out = run_cli(f'--root={root}', '--json')
  assert out.returncode == 0, out.stderr
  assert out.stdout.count('other than 0 and 255') == 2  # the warning line and the JSON
  assert json.loads(out.stdout.strip().splitlines()[-1])['non_binary_masks'] == 7
  _clean_masks(root, ids)
  assert data.inspect(root)['non_binary_masks'] == 0


def test_non_binary_masks_recorded_when_prepared_and_warned_on_load(tmp_path, monkeypatch):
  from limijax import tfds_builders
  root = str(tmp_path / 'ds')
  ids, _, _ = make_layout(root, 'folder')
  _clean_masks(root, ids[:4])
  logged = []
  stand_in = types.SimpleNamespace(warning=lambda msg, *a: logged.append(msg % a))
  monkeypatch.setattr(data.load, 'logging', stand_in)  # load's absl logging only
  cfg = data_cfg(tmp_path, name='folder', root=root, split='random')
  ds = data.load_dataset(cfg)
  assert tfds_builders.read_meta(ds.prepared_dir)['non_binary_masks'] == 6
  assert len(logged) == 1 and '6 of 10 masks hold values other than 0 and 255' in logged[0]
  data.load_dataset(cfg)  # the prepared copy is reused: still one warning per load
  assert len(logged) == 2 and logged[1] == logged[0]
  _clean_masks(root, ids)
  data.load_dataset(cfg)
  assert len(logged) == 2  # all masks 0/255: no warning


def test_16bit_frames_stretched_in_datasets(tmp_path):
  root = str(tmp_path / 'ir16')
  make_layout(root, 'folder', n=4)
  frame = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 50 + 1000)  # 1000 .. 16950
  write(os.path.join(root, 'images', 'f01.png'), frame)
  report = data.inspect(root)
  assert report['usable'], report['problems']
  expected = np.floor((frame.astype(np.float64) - 1000) * 255 / (H * W * 50 - 50) + 0.5)
  ds = data.folder_dataset(root, split='random', val_fraction=0.0, test_fraction=0.0)
  ex = next(ds.train[i] for i in range(len(ds.train)) if ds.train[i]['id'] == 'f01')
  np.testing.assert_array_equal(ex['image'], expected.astype(np.uint8))
  assert ex['image'][0, 0] == 0 and ex['image'][-1, -1] == 255


@pytest.mark.parametrize('state', ['missing', 'empty', 'unrecognised'])
def test_no_dataset_is_one_line_saying_where_and_what(tmp_path, monkeypatch, state):
  monkeypatch.chdir(tmp_path)
  root = os.path.join('datasets', 'NUDT-SIRST')
  if state != 'missing':
    os.makedirs(root)
  if state == 'unrecognised':
    (tmp_path / root / 'readme.txt').write_text('not a dataset')
  with pytest.raises(UserError) as e:
    data.load_dataset(data_cfg(tmp_path, name='nudt', root=root))
  message = str(e.value)
  assert '\n' not in message
  assert message.startswith(f'no dataset at {root} ({tmp_path / root}): put NUDT-SIRST there '
                            f'(images/, masks/, img_idx/train_NUDT-SIRST.txt')
  assert message.endswith('or set --config.data.root=DIR')


def test_no_dataset_points_at_dataset_folders_inside(tmp_path):
  make_layout(str(tmp_path / 'datasets' / 'IRSTD-1k'), 'irstd1k', n=4)
  with pytest.raises(UserError, match=r'holds dataset folders \(IRSTD-1k\): point data.root '
                     r'at one: put IRSTD-1k there'):
    data.load_dataset(data_cfg(tmp_path, name='irstd1k', root=str(tmp_path / 'datasets')))
