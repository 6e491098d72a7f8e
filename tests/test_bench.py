"""limijax.bench: every measurement runs and reports sane numbers (timings are not
asserted: speed lives in BENCHMARKS.md, not in tests)."""

import json
import subprocess
import sys

import pytest

from limijax import bench


def test_run_all_reports_every_measurement_on_small_inputs():
  r = bench.run_all(repeats=1, batch_size=2, impls=['shift', 'grouped'], workers=0,
                    pipeline_batches=2, train_size=32, inference_sizes=(32, 48),
                    pipeline_size=32)
  assert r['machine']['backend'] == 'cpu'
  assert [t['impl'] for t in r['train_step']] == ['shift', 'grouped']
  for t in r['train_step']:
    assert t['size'] == 32 and t['batch_size'] == 2
    assert t['step_s'] > 0 and t['images_per_s'] == t['batch_size'] / t['step_s']
  assert [t['size'] for t in r['inference']] == [32, 48]
  assert all(t['fps'] == pytest.approx(1e3 / t['latency_ms']) for t in r['inference'])
  (p,) = r['pipeline']
  assert p['num_workers'] == 0 and p['images_per_s'] == 2 * p['batches_per_s']
  json.dumps(r)  # the --json line must serialise
  table = bench.format_table(r)
  assert 'depthwise=shift' in table and '48x48' in table and '0 worker processes' in table


def test_cli_bad_flag_is_one_line_exit_2():
  proc = subprocess.run([sys.executable, '-m', 'limijax.bench', '--impls=fast'],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith('error: --impls')
  assert 'Traceback' not in proc.stderr
