"""Several seeds on two CPU devices (a subprocess with
--xla_force_host_platform_device_count=2) equal, bit for bit, the seeds trained on one
(the shared run of seeds 0 and 1, tests/conftest.py): whole seeds per device. The batch
split over two devices is compared with one device in tests/test_multihost.py, whose
reference run it is."""

import json
import os
import subprocess

import pytest

from tiny_run import REPO, TWO_SEEDS, main_args


def test_two_devices_train_the_seeds_one_device_trains(data_dir, tmp_path, tiny_two_seeds):
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2')
  workdir = tmp_path / 'w'
  proc = subprocess.run(main_args(str(workdir), data_dir, **TWO_SEEDS), capture_output=True,
                        text=True, timeout=600, cwd=REPO, env=env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'data parallel over 2 devices (seeds split)' in proc.stderr
  for expected in tiny_two_seeds[1]['runs']:
    with open(workdir / f'seed_{expected["seed"]}' / 'results.json') as f:
      got = json.load(f)
    # Each device trains its seeds as one device does: the same step on the same values.
    for key in ('best_epoch', 'val', 'test', 'best_test_epoch', 'steps'):
      assert got[key] == expected[key], key
