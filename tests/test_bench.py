"""limijax.bench: the torch training loss is the JAX loss (what makes the training rows
comparable), the bookkeeping of rows, loop windows and the evaluated split, and one
small run of the command (inference, pipeline and evaluation rows) checked against the
JSON schema. Speed is never asserted:
it lives in BENCHMARKS.md."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from limijax import process
from limijax import bench
from limijax.bench import harness
from limijax.bench import rows
from limijax import defaults
from limijax import losses
from limijax import model as model_lib
from limijax import torch_convert
from limijax import torch_twin
from limijax.data import splits
from limijax import evaluation


@pytest.fixture(scope='module', autouse=True)
def _torch_threads():
  torch.set_num_threads(1)  # the suite runs two test processes on two cores


# --------------------------------------------------------------------------- the loss
def test_torch_loss_golden_value():
  # Every logit 0 (sigma = 1/2) on a 2x2 image with one target pixel, at every scale:
  # SoftBCE = log 2 whatever the smoothing (t log 1/2 + (1 - t) log 1/2 = log 1/2);
  # Dice = 1 - (2 * 1/2 + 1) / (4 * 1/2 + 1 + 1) = 1/2; so each scale gives
  # 0.6 log 2 + 0.4 / 2, weighted 2000 ** -alpha: 1 for the final output and
  # 2000 ** -0.1, -0.05, -0.01, -0.001 for the four side outputs.
  cfg = defaults.base_config().loss
  y = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
  zero = torch.zeros_like(y)
  total, terms = torch_twin.c2f_loss(zero, (zero,) * 4, y, cfg)
  per_scale = 0.6 * math.log(2) + 0.4 * 0.5
  weights = 1 + sum(2000.0 ** -a for a in (0.1, 0.05, 0.01, 0.001))
  assert float(total) == pytest.approx(per_scale * weights, rel=1e-6)
  assert float(terms['side0']) == pytest.approx(per_scale * 2000.0 ** -0.1, rel=1e-6)
  assert sorted(terms) == ['final', 'side0', 'side1', 'side2', 'side3']


def test_torch_loss_equals_jax_loss_for_the_same_weights_and_batch():
  config = defaults.base_config()
  model = model_lib.from_config(config)
  variables = model_lib.init(model, jax.random.PRNGKey(3))
  params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
  rng = np.random.default_rng(0)
  image = rng.standard_normal((2, 32, 32, 1)).astype(np.float32)
  mask = np.zeros((2, 32, 32, 1), np.float32)
  mask[0, 10:13, 4:7], mask[1, 20:22, 25:27] = 1, 1
  final, sides = jax.jit(lambda v, x: model.apply(v, x, train=True))(variables, image)
  want, want_terms = losses.loss_from_config(final, sides, mask, config.loss)

  def nchw(a):
    return torch.from_numpy(np.array(np.asarray(a).transpose(0, 3, 1, 2)))

  # The loss functions alone, on the same logits.
  got, got_terms = torch_twin.c2f_loss(nchw(final), tuple(nchw(s) for s in sides),
                                        nchw(mask), config.loss)
  assert float(got) == pytest.approx(float(want), rel=1e-6)
  for k, v in want_terms.items():
    assert float(got_terms[k]) == pytest.approx(float(v), rel=1e-6), k
  # The whole training objective: the twin in train mode with the converted weights.
  net = torch_twin.build(config)
  net.load_state_dict(torch_convert.flax_to_state_dict(params, state, config))
  with torch.no_grad():
    t_final, t_sides = net.train()(nchw(image))
  got, _ = torch_twin.c2f_loss(t_final, t_sides, nchw(mask), config.loss)
  assert float(got) == pytest.approx(float(want), rel=1e-5)
  assert 0.5 < float(want) < 10  # a real loss, not a degenerate one


def test_torch_train_step_updates_the_twin_with_adamw():
  config = defaults.base_config()
  variables = model_lib.init(model_lib.from_config(config), jax.random.PRNGKey(0))
  params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
  b = bench.Backends(config, jax.device_get(params), jax.device_get(state), 'cpu',
                     torch_compile=False)
  try:
    batch = rows._train_batch(2, 32)  # pylint: disable=protected-access
    step = bench.torch_train_step(b, batch, compiled=False)
    twin = step.model
    before = twin.state_dict()['head.logit.bias'].clone()
    step()
    after = twin.state_dict()['head.logit.bias']
    # The first AdamW step moves every weight with a gradient by about lr (5e-3).
    assert 1e-3 < float((after - before).abs().max()) < 1e-2
    assert twin.training
  finally:
    b.close()


# --------------------------------------------------------------------------- bookkeeping
def test_row_ratio_and_fraction_of_peak():
  row = bench.make_row('x', {'jax': 20.0, 'torch_eager': 40.0, 'torch_compile': 10.0},
                       flops=1e9, peak=1e11, extra=1)
  # ratio: 20 ms over the best torch, 10 ms; 1e9 FLOP in 20 ms is 5e10 FLOP/s, half of 1e11.
  assert row['ratio'] == 2.0 and row['fraction_of_peak'] == pytest.approx(0.5)
  assert row['fractions_of_peak']['torch_compile'] == pytest.approx(1.0)
  assert row['onnxruntime_ms'] is None and row['fractions_of_peak']['onnxruntime'] is None
  assert row['extra'] == 1
  alone = bench.make_row('y', {'jax': 5.0}, None, None)
  assert alone['ratio'] is None and alone['fraction_of_peak'] is None


def test_loop_time_per_step_leaves_out_the_compiling_window():
  records = [
      {'event': 'train', 'step': 1, 'epoch': 1, 'steps_per_s': 0.1},  # compiles: 10 s
      {'event': 'train', 'step': 10, 'epoch': 1, 'steps_per_s': 2.0},  # 9 steps in 4.5 s
      {'event': 'val', 'step': 10, 'epoch': 1, 'miou': 0.1},
      {'event': 'train', 'step': 20, 'epoch': 2, 'steps_per_s': 4.0},  # 10 steps in 2.5 s
  ]
  ms, steps, first = bench.loop_step_ms(records)
  assert steps == 19 and first == pytest.approx(10.0)
  assert ms == pytest.approx(7000.0 / 19)


@pytest.mark.parametrize('batch_size,loop_steps', [(10, 30), (2, 3)])
def test_loop_config_fills_whole_log_windows(batch_size, loop_steps):
  c = bench.loop_config(defaults.base_config(), batch_size, 64, loop_steps, '/tmp/unused')
  ids = [str(i) for i in range(c.data.num_images)]
  train = splits.split_ids(ids, None, 'random', split_seed=c.data.split_seed,
                           test_fraction=c.data.test_fraction,
                           val_fraction=c.data.val_fraction)['train']
  spe = len(train) // batch_size
  assert spe == min(loop_steps, c.log_every_steps)  # no window spans an epoch's end
  assert c.num_epochs * spe >= loop_steps and (c.num_epochs - 1) * spe < loop_steps
  assert c.eval_every_epochs == c.num_epochs and not c.tophat_baseline
  defaults.checked(c)


@pytest.mark.parametrize('size', [32, 256])
def test_eval_split_has_ten_padded_shapes(size):
  source = bench.eval_split(size)
  shapes = [ex['image'].shape for ex in source]
  assert len(source) == 20 and len(set(shapes)) == 10
  padded = {(-(-h // 16), -(-w // 16)) for h, w in shapes}
  assert len(padded) == 10  # one compilation each in a per-image loop
  assert all(h % 16 and w % 16 for h, w in shapes)
  assert all(ex['mask'].sum() > 0 and ex['mask'].shape == ex['image'].shape for ex in source)


def test_summary_names_what_the_issue_asks():
  rows = [bench.make_row('train_b2_32', {'jax': 100.0, 'torch_eager': 50.0}, 1e6, 1e9,
                         images_per_s=20.0),
          bench.make_row('train_loop_b2_32', {'jax': 108.0}, 1e6, 1e9, over_train_step=1.08),
          bench.make_row('pipeline_its_32', {'jax': 10.0}, None, None, over_train_step=10.0)]
  s = bench.summarize(rows)
  assert s['jax_over_best_torch'] == {'train_b2_32': 2.0}
  assert s['loop_within_10_percent'] and s['pipeline_at_least_5x']


# --------------------------------------------------------------------------- the command
@pytest.fixture(scope='module')
def cli_rows():
  """One small run of the command for the inference, pipeline and evaluation rows (one
  process: its start, the backends' set-up and the ONNX export are paid once), started
  without the huge-pages tunable."""
  command = [sys.executable, '-m', 'limijax.bench', '--json', '--only=infer,pipeline,eval',
             '--image_size=32', '--batch_size=2', '--repeats=1', '--no_torch_compile']
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  return {'command': command, 'env': env, 'proc': proc, 'out': out,
          'by': {r['name']: r for r in out['rows']}}


def test_cli_json_rows_on_small_inputs(cli_rows):
  out, by, env = cli_rows['out'], cli_rows['by'], cli_rows['env']
  names = [r['name'] for r in out['rows']]
  assert names == ['infer_b1_32', 'infer_b1_64', 'infer_b16_32', 'pipeline_its_32',
                   'eval_sizes10']
  for r in out['rows']:
    assert set(bench.BACKENDS) <= {k[:-3] for k in r if k.endswith('_ms')}
    assert r['jax_ms'] > 0 and r['torch_compile_ms'] is None  # --no_torch_compile
  for name in ('infer_b1_32', 'infer_b1_64', 'infer_b16_32'):
    r = by[name]
    assert r['torch_eager_ms'] > 0 and r['onnxruntime_ms'] > 0
    assert r['ratio'] == pytest.approx(r['jax_ms'] / r['torch_eager_ms'])
    assert r['flops'] > 0 and r['fraction_of_peak'] > 0
  # Counted FLOPs scale with the work: 4x the pixels, 16x the images.
  assert by['infer_b1_64']['flops'] == pytest.approx(4 * by['infer_b1_32']['flops'])
  assert by['infer_b16_32']['flops'] == pytest.approx(16 * by['infer_b1_32']['flops'])
  pipe = by['pipeline_its_32']
  assert pipe['torch_eager_ms'] is None and pipe['flops'] is None
  assert pipe['images_per_s'] == pytest.approx(2 / (pipe['jax_ms'] / 1e3))
  assert pipe['over_train_step'] is None  # no training step was timed to compare with
  assert out['machine']['cpu_count'] >= 1 and out['machine']['depthwise_auto'] == 'shift'
  # Started without the tunable, the command executed itself again with it, where glibc
  # and the kernel offer huge pages (Linux, glibc >= 2.35).
  with_huge_pages = process.huge_pages_environment(env, cli_rows['command']) is not None
  assert ('glibc.malloc.hugetlb=1' in (out['machine']['glibc_tunables'] or '')) == (
      with_huge_pages)
  assert out['peak']['peak'] > 0
  assert out['settings']['only'] == ['infer', 'pipeline', 'eval']
  assert 'infer_b1_32: JAX takes' in cli_rows['proc'].stdout
  assert out['summary']['jax_over_best_torch']['infer_b1_64'] == by['infer_b1_64']['ratio']


def test_cli_eval_row_compiles_a_handful_of_shapes_against_one_per_size(cli_rows):
  # The split has 20 images of 10 padded sizes: evaluate_source compiles one program per
  # shape it groups them into (evaluation.EVAL_SHAPES), the per-image loop one per size.
  out, row = cli_rows['out'], cli_rows['by']['eval_sizes10']
  assert row['images'] == 20 and row['padded_shapes'] == 10
  assert row['compilations'] == evaluation.EVAL_SHAPES == 4
  assert row['per_image_loop']['compilations'] == 10
  assert row['first_pass_s'] > 0 and row['per_image_loop']['first_pass_s'] > 0
  assert row['images_per_s'] == pytest.approx(1e3 / row['jax_ms'])
  loop = row['per_image_loop']
  assert loop['images_per_s'] == pytest.approx(1e3 / loop['ms'])
  assert row['torch_eager_ms'] > 0 and row['onnxruntime_ms'] > 0
  assert out['summary']['eval'] == {
      'compilations': 4, 'images_per_s': row['images_per_s'],
      'per_image_loop_compilations': 10, 'per_image_loop_images_per_s': loop['images_per_s']}
  stdout = cli_rows['proc'].stdout
  assert '4 compilations' in stdout and '10 compilations' in stdout


def test_cli_bad_flag_is_one_line_exit_2():
  proc = subprocess.run([sys.executable, '-m', 'limijax.bench', '--only=train,fast'],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      'error: --only: unknown group fast; expected some of '
      'train,depthwise,loop,infer,pipeline,eval')
  assert 'Traceback' not in proc.stderr


def test_interleaved_times_bursts_after_an_untimed_change_over_call(monkeypatch):
  calls, clock = [], [0.0]
  monkeypatch.setattr(harness, 'now', lambda: clock[0])

  def make(name):
    def fn():  # on the fake clock
      # Slow right after the other backend (its threads "still spinning"), fast in a row.
      slow = bool(calls) and calls[-1] != name
      calls.append(name)
      clock[0] += 0.05 if slow else 0.001
    return fn

  ms, first = bench.interleaved({'a': make('a'), 'b': make('b')}, repeats=2, desc='t',
                                burst=3, change_over_s=0.0)
  # Two warm-up calls each, then per round each backend's burst: 1 untimed + 3 timed.
  assert calls == ['a', 'a', 'b', 'b'] + (['a'] * 4 + ['b'] * 4) * 2
  assert first == {'a': pytest.approx(0.001), 'b': pytest.approx(0.05)}  # b's followed a's
  # The slow change-over calls are not among the timed ones: 1 ms each.
  assert ms == {'a': pytest.approx(1.0), 'b': pytest.approx(1.0)}, ms


def test_interleaved_change_over_lasts_change_over_s_before_the_timed_calls(monkeypatch):
  calls, clock = [], [0.0]
  monkeypatch.setattr(harness, 'now', lambda: clock[0])

  def make(name):
    def fn():  # each call takes a quarter of a second on the fake clock
      calls.append(name)
      clock[0] += 0.25
    return fn

  bench.interleaved({'a': make('a'), 'b': make('b')}, repeats=2, desc='t', burst=2,
                    change_over_s=1.0)
  # Two warm-up calls each; then per round and backend 4 untimed calls (1 s), 2 timed.
  assert calls == ['a', 'a', 'b', 'b'] + (['a'] * 6 + ['b'] * 6) * 2
