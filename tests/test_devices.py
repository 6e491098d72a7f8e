"""Training on two CPU devices (a subprocess with --xla_force_host_platform_device_count=2)
equals training on one: the batch split, and whole seeds per device."""

import json
import os

import pytest

from limijax import train
from tiny_run import REPO, synthetic_config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = tmp_path_factory.getbasetemp() / 'limijax-data'
  path.mkdir(exist_ok=True)
  return str(path)


@pytest.fixture(scope='module')
def one_device(data_dir, tmp_path_factory):
  """The tiny run with seeds 1 and 2 in one process, on one device."""
  workdir = str(tmp_path_factory.mktemp('one') / 'w')
  return train.train_and_evaluate(synthetic_config(data_dir, num_seeds=2), workdir,
                                  progress=False)


# --------------------------------------------------------------------------- data parallel
def _two_device_run(data_dir, workdir, **overrides):
  """The tiny run in a fresh process that sees two CPU devices."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  values = {'seed': 1, 'data.root': '/unused/by/synthetic', 'data.split_seed': 1,
            'num_epochs': 3, 'batch_size': 4, 'eval_every_epochs': 1, 'data.image_size': 32,
            'data.num_images': 50, 'data.synthetic_size': 32, 'data.its.enabled': True,
            'data.data_dir': data_dir, **overrides}
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2')
  proc = subprocess.run(
      [sys.executable, '-m', 'limijax.main', f'--config={REPO / "configs" / "synthetic.py"}',
       f'--workdir={workdir}', '--progress=false',
       *(f'--config.{k}={v}' for k, v in values.items())],
      capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'data parallel over 2 devices' in proc.stderr
  return proc


@pytest.mark.parametrize('num_seeds', [1, 2])  # the batch split / the seeds split
def test_two_devices_train_what_one_device_trains(data_dir, tmp_path, one_device, num_seeds):
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
