"""Training on two CPU devices (a subprocess with --xla_force_host_platform_device_count=2)
equals training on one (the shared run of seeds 1 and 2, tests/conftest.py): the batch
split, and whole seeds per device."""

import json
import os

import pytest

from tiny_run import REPO, main_args


# --------------------------------------------------------------------------- data parallel
def _two_device_run(data_dir, workdir, **overrides):
  """The tiny run in a fresh process that sees two CPU devices."""
  import subprocess  # pylint: disable=g-import-not-at-top
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2')
  proc = subprocess.run(main_args(workdir, data_dir, **overrides), capture_output=True,
                        text=True, timeout=600, cwd=REPO, env=env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'data parallel over 2 devices' in proc.stderr
  return proc


@pytest.mark.parametrize('num_seeds', [1, 2])  # the batch split / the seeds split
def test_two_devices_train_what_one_device_trains(data_dir, tmp_path, tiny_two_seeds, num_seeds):
  one_device = tiny_two_seeds[1]  # seeds 1 and 2 in one process, on one device
  workdir = tmp_path / 'w'
  _two_device_run(data_dir, str(workdir), num_seeds=num_seeds)
  if num_seeds == 1:  # seed 1 alone: the first seed of the one-device pair
    pairs = [(workdir, one_device['runs'][0])]
  else:
    pairs = [(workdir / f'seed_{r["seed"]}', r) for r in one_device['runs']]
  for folder, expected in pairs:
    with open(folder / 'results.json') as f:
      got = json.load(f)
    # Sums over a batch split in two are added in another order: metrics within 1e-2.
    assert got['best_epoch'] == expected['best_epoch']
    for key in ('miou', 'niou', 'pd'):
      assert got['test'][key] == pytest.approx(expected['test'][key], abs=1e-2), key
