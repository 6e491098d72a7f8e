"""The tiny synthetic run the training tests share: 50 images of 32x32 (10 test, 8 val,
32 train), 3 epochs of 8 steps of batch 4, ITS on (the synthetic config turns it off, so
that resume covers its random draws too), test scored at every validation (track_test).

The depthwise convolutions take their grouped form, which traces and compiles in about
half the time of the CPU's default shift form on this model (the forms' equality is
tested in tests/test_depthwise.py; the CLI runs of tests/test_cli_runs.py take it too).
One run of it (seed 1) and one of seeds 0 and 1 together (:data:`TWO_SEEDS`) are trained
once per test run and shared by every test file (the ``tiny_run`` and ``tiny_two_seeds``
fixtures of tests/conftest.py).
"""

import pathlib
import signal
import subprocess
import sys
import time

from limijax import defaults

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / 'configs' / 'synthetic.py'

# Seeds 0 and 1 in one process (num_seeds=2; seed 1 is the single run's, and seed 0 also
# learns something in 3 epochs, seed 2 does not), each with the single run's settings.
TWO_SEEDS = {'seed': 0, 'num_seeds': 2}

VALUES = {'seed': 1, 'data.root': '/unused/by/synthetic', 'data.split_seed': 1,
          'num_epochs': 3, 'batch_size': 4, 'eval_every_epochs': 1,
          'data.image_size': 32, 'data.num_images': 50, 'data.synthetic_size': 32,
          'data.its.enabled': True, 'model.depthwise': 'grouped', 'track_test': True}


def synthetic_config(data_dir, **overrides):
  config = defaults.config_from_file(str(CONFIG))
  for key, value in {**VALUES, 'data.data_dir': data_dir, **overrides}.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.lock()
  return config


def config_args(data_dir, **overrides):
  """The same run as ``--config`` flags of the commands."""
  values = {**VALUES, 'data.data_dir': data_dir, **overrides}
  return [f'--config={CONFIG}', *(f'--config.{k}={v}' for k, v in values.items())]


def main_args(workdir, data_dir, **overrides):
  """``python -m limijax.main`` training the run into ``workdir``."""
  return [sys.executable, '-m', 'limijax.main', *config_args(data_dir, **overrides),
          f'--workdir={workdir}', '--progress=false']


def kill_when(args, ready, log_path, *, env=None, deadline_s=300) -> int:
  """Start the command ``args`` (output to ``log_path``), SIGKILL it as soon as
  ``ready()`` is true, and return its exit code (``-SIGKILL`` when killed)."""
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
      deadline = time.monotonic() + deadline_s
      while not ready():
        assert proc.poll() is None, pathlib.Path(log_path).read_text()[-3000:]
        assert time.monotonic() < deadline, 'the moment to kill never came'
        time.sleep(0.02)
      proc.send_signal(signal.SIGKILL)
    finally:
      proc.kill()
      proc.wait()
  return proc.returncode


def assert_one_line_error(proc, *needles) -> str:
  """A command's bad-input exit: code 2, no traceback, one stderr line naming each needle."""
  assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  return lines[0]
