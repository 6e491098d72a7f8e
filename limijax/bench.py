"""Speed of limijax on this machine: ``python -m limijax.bench [--json]``.

Times, in one process:

* ``train_step``: one jitted training step (forward with the C2F side heads, the loss
  of eq. 4, backward, AdamW update) on a batch of ``--batch_size`` x 256 x 256, for each
  depthwise form asked for (``--impls``; on a CPU the default compares ``shift`` with
  ``grouped``);
* ``inference``: the inference function (no side heads) on one image at 256 x 256 and
  512 x 512, as the paper measures FPS (test batch 1);
* ``pipeline``: the Grain training pipeline with ITS (crop, flips, ITS, normalisation,
  batching) at 256 x 256 over synthetic 256 x 256 images, in this process
  (``num_workers=0``) and with ``--workers`` worker processes.

Each timing is the median of ``--repeats`` runs after a warm-up (compilation is timed
on its own). Prints a table; with ``--json`` the last stdout line is one JSON object.
Figures measured on our machines are in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable, Sequence

from absl import flags
import numpy as np
from tqdm import tqdm

from limijax.errors import UserError, run

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program, so that importing this module (tests) does not
  # clash with the flags of the other commands.
  flags.DEFINE_bool('json', False, 'End the output with the results as one JSON line.')
  flags.DEFINE_integer('repeats', 10, 'Timed runs of each measurement (median).')
  flags.DEFINE_integer('batch_size', 10, 'Training batch size (the paper: 10).')
  flags.DEFINE_list('impls', None, 'Depthwise forms to time the training step with '
                    '(default: shift,grouped on CPU, grouped elsewhere).')
  flags.DEFINE_integer('workers', 2, 'Grain worker processes for the second pipeline '
                       'measurement (0 skips it).')
  flags.DEFINE_integer('pipeline_batches', 30, 'Batches drawn per pipeline measurement.')


def _median_time(fn: Callable[[], object], repeats: int, desc: str) -> float:
  times = []
  for _ in tqdm(range(repeats), desc=desc, leave=False):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _block(x):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.block_until_ready(x)


def bench_train_step(impl: str, batch_size: int, size: int, repeats: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from limijax import defaults, model as model_lib, train  # pylint: disable=g-import-not-at-top

  config = defaults.base_config()
  config.model.depthwise = impl
  model = model_lib.from_config(config)
  tx, schedule = train.make_optimizer(config, steps_per_epoch=100)
  step = train.make_train_step(model, tx, schedule, config.loss)
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.standard_normal((batch_size, size, size, 1)), jnp.float32),
           'mask': jnp.asarray(rng.random((batch_size, size, size, 1)) < 0.01, jnp.float32)}
  state = train.init_state(model, tx, train.seed_key(0))
  t0 = time.perf_counter()
  state, out = step(state, batch)
  _block(out['loss'])
  compile_s = time.perf_counter() - t0

  def once():
    nonlocal state
    state, out = step(state, batch)
    _block(out['loss'])

  once()
  seconds = _median_time(once, repeats, f'train step ({impl})')
  return {'impl': impl, 'batch_size': batch_size, 'size': size, 'step_s': seconds,
          'images_per_s': batch_size / seconds, 'compile_s': compile_s}


def bench_inference(size: int, repeats: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from limijax import defaults, model as model_lib, train  # pylint: disable=g-import-not-at-top

  config = defaults.base_config()
  model = model_lib.from_config(config)
  variables = model_lib.init(model, jax.random.PRNGKey(0))
  params, model_state = train.split_variables(variables)
  predict = train.make_predict(model)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, size, size, 1)), jnp.float32)
  t0 = time.perf_counter()
  _block(predict(params, model_state, x))
  compile_s = time.perf_counter() - t0
  _block(predict(params, model_state, x))
  seconds = _median_time(lambda: _block(predict(params, model_state, x)), repeats,
                         f'inference {size}')
  return {'batch_size': 1, 'size': size, 'latency_ms': 1e3 * seconds, 'fps': 1.0 / seconds,
          'compile_s': compile_s}


def bench_pipeline(num_workers: int, batches: int, batch_size: int, size: int) -> dict:
  from limijax import defaults, input_pipeline, synthetic  # pylint: disable=g-import-not-at-top

  # In memory, so the figure is the pipeline's own work, not disk reads.
  source = [{'image': im, 'mask': m, 'id': i}
            for i, im, m in synthetic.generate(4 * batch_size, size, seed=0)]
  its_cfg = defaults.base_config().data.its
  t0 = time.perf_counter()
  it = input_pipeline.make_train_iter(
      source, image_size=size, batch_size=batch_size, mean=100.0, std=30.0, seed=0,
      its_cfg=its_cfg, num_workers=num_workers)
  next(it)  # start-up (worker processes, first batch)
  start_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in tqdm(range(batches), desc=f'pipeline ({num_workers} workers)', leave=False):
    next(it)
  seconds = time.perf_counter() - t0
  return {'num_workers': num_workers, 'batch_size': batch_size, 'size': size,
          'batches_per_s': batches / seconds, 'images_per_s': batches * batch_size / seconds,
          'startup_s': start_s}


def machine() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  return {'backend': jax.default_backend(), 'device': dev.device_kind,
          'cpu_count': os.cpu_count(), 'processor': platform.processor() or platform.machine(),
          'jax': jax.__version__, 'python': platform.python_version()}


def run_all(repeats: int, batch_size: int, impls: Sequence[str] | None, workers: int,
            pipeline_batches: int, train_size: int = 256,
            inference_sizes: Sequence[int] = (256, 512), pipeline_size: int = 256) -> dict:
  """Every measurement; the sizes are the contract's, smaller only in tests."""
  import jax  # pylint: disable=g-import-not-at-top
  from limijax import depthwise  # pylint: disable=g-import-not-at-top
  if repeats < 1 or batch_size < 1 or pipeline_batches < 1 or workers < 0:
    raise UserError('--repeats, --batch_size and --pipeline_batches must be positive and '
                    '--workers not negative')
  if impls is None:
    impls = ['shift', 'grouped'] if jax.default_backend() == 'cpu' else ['grouped']
  for impl in impls:
    if impl not in depthwise.IMPLS:
      raise UserError(f'--impls: unknown depthwise form {impl!r}; expected {depthwise.IMPLS}')
  results = {'machine': machine(), 'date': time.strftime('%Y-%m-%d'),
             'train_step': [bench_train_step(i, batch_size, train_size, repeats) for i in impls],
             'inference': [bench_inference(s, repeats) for s in inference_sizes],
             'pipeline': [bench_pipeline(0, pipeline_batches, batch_size, pipeline_size)]}
  if workers:
    results['pipeline'].append(
        bench_pipeline(workers, pipeline_batches, batch_size, pipeline_size))
  return results


def format_table(r: dict) -> str:
  m = r['machine']
  lines = [f'limijax bench, {r["date"]}: {m["backend"]} ({m["device"]}), {m["cpu_count"]} CPU '
           f'cores, jax {m["jax"]}', '']
  lines.append('training step (C2F loss + AdamW)')
  for t in r['train_step']:
    lines.append(f'  {t["size"]}x{t["size"]} depthwise={t["impl"]:<8} batch {t["batch_size"]}: '
                 f'{t["step_s"] * 1e3:8.1f} ms'
                 f'  ({t["images_per_s"]:.1f} img/s; compile {t["compile_s"]:.1f} s)')
  lines.append('inference (batch 1, no side heads)')
  for t in r['inference']:
    lines.append(f'  {t["size"]}x{t["size"]}: {t["latency_ms"]:8.2f} ms  ({t["fps"]:.1f} FPS)')
  lines.append('input pipeline with ITS')
  for t in r['pipeline']:
    lines.append(f'  {t["size"]}x{t["size"]}, {t["num_workers"]} worker processes: {t["images_per_s"]:8.1f} img/s '
                 f'({t["batches_per_s"]:.2f} batches of {t["batch_size"]}/s; start-up '
                 f'{t["startup_s"]:.1f} s)')
  return '\n'.join(lines)


def main(argv):
  results = run_all(FLAGS.repeats, FLAGS.batch_size, FLAGS.impls, FLAGS.workers,
                    FLAGS.pipeline_batches)
  print(format_table(results))
  if FLAGS.json:
    print(json.dumps(results))


if __name__ == '__main__':
  _define_flags()
  run(main)
