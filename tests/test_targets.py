"""limijax.data.targets: each target's size, peak over its ring and SCR, worked by hand;
the ITS ranges read off them; ``python -m limijax.data --targets`` on a folder."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from limijax import analysis
from limijax.data import targets


def _scene():
  # Background: a chequer of 100 and 102 (mean 101, std 1); target A, a 3x3 square of
  # 150 with a 200 centre, at rows 10-12; target B, one pixel of 120 touching nothing.
  image = np.where((np.indices((40, 40)).sum(0) % 2) == 0, 100.0, 102.0)
  mask = np.zeros((40, 40), np.uint8)
  image[10:13, 10:13] = 150.0
  image[11, 11] = 200.0
  mask[10:13, 10:13] = 255
  image[30, 30] = 120.0
  mask[30, 30] = 255
  return image, mask


def test_each_target_by_hand():
  image, mask = _scene()
  a, b = targets.measure(image, mask)
  # A: 9 px, peak 200 over a ring of the chequer (mean 101 to within its parity: the ring
  # of a 3x3 square grown by 5 is 13x13 - 9 = 160 px, 80 of each value).
  assert a['area'] == 9 and a['radius'] == pytest.approx(math.sqrt(9 / math.pi))
  assert a['peak'] == pytest.approx(200 - 101)
  mean_a = (8 * 150 + 200) / 9
  assert a['scr'] == pytest.approx((mean_a - 101) / 1.0)  # ring std 1: exactly the floor
  # B: one pixel; its ring is 11x11 - 1 = 120 px, 60 of each value.
  assert b['area'] == 1 and b['peak'] == pytest.approx(19) and b['scr'] == pytest.approx(19)
  # analysis buckets targets by the same ratio
  inside = np.zeros((40, 40), bool)
  inside[10:13, 10:13] = True
  assert analysis.local_contrast(image, inside, mask > 0, (10, 13, 10, 13)) == a['scr']


def test_summary_percentiles_and_its_ranges():
  found = [{'area': a, 'radius': math.sqrt(a / math.pi), 'peak': p, 'scr': None}
           for a, p in zip(range(1, 102), np.linspace(10, 210, 101))]
  stats = targets.summary(found)
  assert stats['area']['p50'] == 51 and stats['area']['p10'] == 11 and stats['area']['p90'] == 91
  assert stats['scr'] == {'n': 0, **{f'p{p}': None for p in (0, 10, 25, 50, 75, 90, 100)}}
  ranges = targets.its_ranges(stats)
  # radius of 11 px and 91 px of area; peaks 30 and 190 grey levels over 255
  assert ranges == {'min_size': round(math.sqrt(11 / math.pi), 1),
                    'max_size': round(math.sqrt(91 / math.pi), 1),
                    'min_contrast': round(30 / 255, 2), 'max_contrast': round(190 / 255, 2)}


def test_data_command_measures_the_training_split_only(tmp_path):
  # Four training images with one 3x3 target each, one test image with a 7x7 target that
  # must not be counted.
  root = tmp_path / 'ds'
  (root / 'images').mkdir(parents=True)
  (root / 'masks').mkdir()
  names = [f'im{i}' for i in range(5)]
  for i, name in enumerate(names):
    image, mask = _scene()
    side = 7 if i == 4 else 3
    image[20:20 + side, 20:20 + side] = 180.0
    mask[20:20 + side, 20:20 + side] = 255
    Image.fromarray(image.astype(np.uint8)).save(root / 'images' / f'{name}.png')
    Image.fromarray(mask).save(root / 'masks' / f'{name}.png')
  (root / 'trainval.txt').write_text('\n'.join(names[:4]) + '\n')
  (root / 'test.txt').write_text(names[4] + '\n')
  proc = subprocess.run([sys.executable, '-m', 'limijax.data', f'--root={root}', '--targets',
                         '--json'], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  report = json.loads(proc.stdout.strip().splitlines()[-1])['targets']
  assert report['images'] == 4 and report['area']['n'] == 12  # 3 targets x 4 images
  assert report['area']['p100'] == 9  # the test image's 49 px target is not there
  assert 'ITS ranges for the middle 80 %: --config.data.its.min_size=' in proc.stdout

