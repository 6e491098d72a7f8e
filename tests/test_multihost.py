"""Two processes on 127.0.0.1 train one run together through jax.distributed, one CPU
device each, and end where one process with two CPU devices ends; that process in turn
trains what one device trains.

The run is the tiny run of tests/tiny_run.py (batch 4, 8 steps an epoch, 3 epochs). Both
two-device layouts split every batch in two halves, one per device, and add the two
halves' gradients: the same sums, and a sum of two terms is the same in either order, so
the parameters, the logged losses and the metrics are compared for equality, not within
a tolerance. Against one device (the shared run, tests/conftest.py) the sums are added in
another order, so that comparison has a tolerance. The two-process run is killed (both
processes, SIGKILL) in its second epoch and started again, so the equality also shows
that the checkpoint the processes wrote together is resumed from. Process 1 runs under
umask 077 and process 0 under 022: the mode of every file shows which process wrote it.
"""

import json
import os
import pathlib
import signal
import socket
import stat
import subprocess
import time

import numpy as np
import pytest

from limijax import run_log
from tiny_run import REPO, main_args

EPOCHS, STEPS_PER_EPOCH = 3, 8  # 32 training images, batch 4
KILL_AFTER = 10  # a step of epoch 2 that writes a train line (log_every_steps 10)
TIMEOUT_S = 480  # a hung process fails the test instead of blocking the suite


def _env(devices):
  env = dict(os.environ)  # conftest.py's: CPU, opt level 0, the shared compilation cache
  if devices > 1:  # one device is the default; XLA_FLAGS unchanged share the cache's programs
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                        f' --xla_force_host_platform_device_count={devices}')
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_pair(workdir, data_dir, logs):
  """Processes 0 and 1 of one run; process 1 creates files readable by its owner only."""
  port = _free_port()
  procs = []
  for pid, umask in ((0, 0o022), (1, 0o077)):
    log = open(logs / f'p{pid}.log', 'w')  # pylint: disable=consider-using-with
    procs.append(subprocess.Popen(
        main_args(workdir, data_dir) + [f'--coordinator_address=127.0.0.1:{port}',
                                        '--num_processes=2', f'--process_id={pid}'],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_env(1),
        preexec_fn=lambda u=umask: os.umask(u)))
    log.close()
  return procs


def _wait(procs, logs):
  deadline = time.monotonic() + TIMEOUT_S
  try:
    for pid, p in enumerate(procs):
      p.wait(timeout=max(deadline - time.monotonic(), 1))
      assert p.returncode == 0, (pid, (logs / f'p{pid}.log').read_text()[-4000:])
  finally:
    for p in procs:
      p.kill()
      p.wait()


def _records(workdir):
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return [json.loads(l) for l in f if l.strip()]
  except (OSError, ValueError):  # not there yet, or a line half written
    return []


def _timeless(records):
  return [{k: v for k, v in r.items() if k not in run_log.TIMING_KEYS}
          for r in records]


def _steps(folder):
  return sorted(int(p.name) for p in pathlib.Path(folder).iterdir() if p.name.isdigit())


def _restore(path):
  """A checkpointed tree, onto this process's device whatever devices saved it."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  ckpt = ocp.StandardCheckpointer()
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                        ckpt.metadata(str(path)).item_metadata)
  return ckpt.restore(str(path), target)


def _assert_equal_trees(a, b):
  import jax  # pylint: disable=g-import-not-at-top
  la, ta = jax.tree_util.tree_flatten_with_path(a)
  lb, tb = jax.tree_util.tree_flatten_with_path(b)
  assert ta == tb
  for (path, x), (_, y) in zip(la, lb):
    assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


def test_two_processes_train_what_one_process_with_two_devices_trains(data_dir, tmp_path,
                                                                     tiny_run):
  # The reference: one process, two devices, uninterrupted ...
  ref = tmp_path / 'one_process'
  proc = subprocess.run(main_args(ref, data_dir), capture_output=True, text=True,
                        timeout=TIMEOUT_S, cwd=REPO, env=_env(2))
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'data parallel over 2 devices (batch split)' in proc.stderr
  # ... trains what one device trains: the shared tiny run.
  one_device = tiny_run[1]
  got = json.loads((ref / 'results.json').read_text())
  assert got['best_epoch'] == one_device['best_epoch']
  for key in ('miou', 'niou', 'pd'):  # sums added in another order: within 1e-2
    assert got['test'][key] == pytest.approx(one_device['test'][key], abs=1e-2), key

  # Two processes, killed together once process 0 has logged a step of epoch 2.
  w = tmp_path / 'two_processes'
  logs = tmp_path / 'logs'
  logs.mkdir()
  procs = _start_pair(w, data_dir, logs)
  try:
    deadline = time.monotonic() + TIMEOUT_S
    while not any(r['event'] == 'train' and r['step'] == KILL_AFTER for r in _records(w)):
      for pid, p in enumerate(procs):
        assert p.poll() is None, (pid, (logs / f'p{pid}.log').read_text()[-4000:])
      assert time.monotonic() < deadline, 'epoch 2 not reached'
      time.sleep(0.02)
    for p in procs:
      p.send_signal(signal.SIGKILL)
  finally:
    for p in procs:
      p.kill()
      p.wait()
  assert _steps(w / 'checkpoints' / 'latest') == [STEPS_PER_EPOCH]  # epoch 1's, written together
  assert not (w / 'results.json').exists()

  # Started again, the pair resumes from that checkpoint and finishes.
  procs = _start_pair(w, data_dir, logs)
  _wait(procs, logs)
  p0, p1 = (logs / 'p0.log').read_text(), (logs / 'p1.log').read_text()
  assert 'data parallel over 2 devices (batch split) in 2 processes' in p0
  assert 'resuming' in p0 and 'resuming' in p1
  assert 'wrote ' in p0 and 'wrote ' not in p1  # process 0 reports the results

  # The same parameters and optimiser state, step by step the same log, the same results.
  step = EPOCHS * STEPS_PER_EPOCH
  for sub in ('latest', 'best'):
    assert _steps(w / 'checkpoints' / sub) == _steps(ref / 'checkpoints' / sub), sub
  _assert_equal_trees(_restore(w / 'checkpoints' / 'latest' / str(step) / 'state'),
                      _restore(ref / 'checkpoints' / 'latest' / str(step) / 'state'))
  best = _steps(ref / 'checkpoints' / 'best')[0]
  _assert_equal_trees(_restore(w / 'checkpoints' / 'best' / str(best) / 'model'),
                      _restore(ref / 'checkpoints' / 'best' / str(best) / 'model'))
  assert _timeless(_records(w)) == _timeless(_records(ref))  # every line once
  results = {d: json.loads((d / 'results.json').read_text()) for d in (w, ref)}
  for key in ('best_epoch', 'val', 'test', 'steps'):
    assert results[w][key] == results[ref][key], key
  assert results[w]['steps'] == step

  # Only process 0 wrote files, but for process 1's own part of each checkpoint (Orbax's
  # and Grain's per-process files, named after it).
  by_p1 = [p.relative_to(w) for p in w.rglob('*')
           if not p.stat().st_mode & stat.S_IRGRP]
  assert by_p1, 'process 1 wrote no part of the checkpoints'
  for path in by_p1:
    assert any(part.startswith(('process_1', 'ocdbt.process_1')) for part in path.parts), path
  assert sorted(p.name for p in w.iterdir()) == sorted(p.name for p in ref.iterdir())
  assert len(list((w / 'tb').iterdir())) == 1  # one TensorBoard writer
