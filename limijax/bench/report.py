"""Every selected row in one run (:func:`run_all`), its summary and the printed table."""

from __future__ import annotations

import time


from limijax.errors import UserError
from limijax.bench.backends import Backends
from limijax.bench.harness import GROUPS, machine, matmul_peak
from limijax.bench.rows import (bench_depthwise, bench_eval, bench_infer, bench_loop,
                                bench_pipeline, bench_train)


def settings(repeats: int = 5, batch_size: int = 10, image_size: int = 256,
             loop_steps: int | None = None, torch_device: str = 'cpu',
             torch_compile: bool = True, pipeline_batches: int = 10, workers: int = 0,
             only=None) -> dict:
  """The checked settings of a run (the flags' values)."""
  import jax  # pylint: disable=g-import-not-at-top
  if loop_steps is None:
    loop_steps = 30 if jax.default_backend() == 'cpu' else 300
  for flag, value, low in (('--repeats', repeats, 1), ('--batch_size', batch_size, 1),
                           ('--loop_steps', loop_steps, 2),
                           ('--pipeline_batches', pipeline_batches, 1),
                           ('--workers', workers, 0)):
    if value < low:
      raise UserError(f'{flag} must be at least {low}, got {value}')
  if image_size < 32 or image_size % 16:
    raise UserError(f'--image_size must be a multiple of 16 and at least 32, got {image_size}')
  if torch_device not in ('cpu', 'cuda'):
    raise UserError(f'--torch_device must be cpu or cuda, got {torch_device!r}')
  groups = list(GROUPS) if not only else [g.strip() for g in only if g.strip()]
  bad = [g for g in groups if g not in GROUPS]
  if bad or not groups:
    raise UserError(f'--only: unknown group {", ".join(bad) or "(none)"}; expected some of '
                    f'{",".join(GROUPS)}')
  return {'repeats': repeats, 'batch_size': batch_size, 'image_size': image_size,
          'loop_steps': loop_steps, 'torch_device': torch_device,
          'torch_compile': torch_compile, 'pipeline_batches': pipeline_batches,
          'workers': workers, 'only': [g for g in GROUPS if g in groups]}


def run_all(s: dict) -> dict:
  """Every selected measurement (``s`` from :func:`settings`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from limijax import defaults, model as model_lib, train  # pylint: disable=g-import-not-at-top
  from limijax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = defaults.base_config()
  params, model_state = workdir_lib.split_variables(
      model_lib.init(model_lib.from_config(config), train.seed_key(0)))
  b = Backends(config, jax.device_get(params), jax.device_get(model_state),
               s['torch_device'], s['torch_compile'])
  try:
    m = machine(b)
    notes = [f'torch: {b.torch_reason}'] if b.torch_reason else []
    notes += [f'onnxruntime: {b.ort_reason}'] if b.ort_reason else []
    notes += [f'torch.compile: {b.compile_reason}'] if b.compile_reason else []
    for line in notes:
      print(f'{line}; its columns are null', flush=True)
    peak = matmul_peak(b, s['repeats'])
    failed: dict[str, str] = {}
    rows = []
    only = s['only']
    train_row = None
    if 'train' in only:
      train_row = bench_train(b, s, peak['peak'], failed)
      rows.append(train_row)
    if 'depthwise' in only:
      rows += bench_depthwise(b, s, peak['peak'], train_row)
    if 'loop' in only:
      rows.append(bench_loop(b, s, train_row, peak['peak']))
    if 'infer' in only:
      rows += bench_infer(b, s, peak['peak'], failed)
    if 'pipeline' in only:
      rows.append(bench_pipeline(b, s, train_row, 0))
      if s['workers']:
        rows.append(bench_pipeline(b, s, train_row, s['workers']))
    if 'eval' in only:
      rows.append(bench_eval(b, s, peak['peak'], failed))
  finally:
    b.close()
  return {'date': time.strftime('%Y-%m-%d'), 'machine': m, 'settings': s, 'peak': peak,
          'notes': notes + [f'{k}: {v}' for k, v in failed.items()], 'rows': rows,
          'summary': summarize(rows)}


def summarize(rows: list[dict]) -> dict:
  """What the issue asks to see, from the rows."""
  out = {'jax_over_best_torch': {r['name']: r['ratio'] for r in rows
                                 if r['ratio'] is not None}}
  loop = next((r for r in rows if r['name'].startswith('train_loop_')), None)
  if loop is not None and loop['over_train_step'] is not None:
    out['loop_over_step'] = loop['over_train_step']
    out['loop_within_10_percent'] = bool(abs(loop['over_train_step'] - 1) <= 0.1)
  pipe = next((r for r in rows if r['name'].startswith('pipeline_its_')), None)
  if pipe is not None and pipe['over_train_step'] is not None:
    out['pipeline_over_step'] = pipe['over_train_step']
    out['pipeline_at_least_5x'] = bool(pipe['over_train_step'] >= 5)
  ev = next((r for r in rows if r['name'].startswith('eval_sizes')), None)
  if ev is not None:
    out['eval'] = {'compilations': ev['compilations'], 'images_per_s': ev['images_per_s'],
                   'per_image_loop_compilations': ev['per_image_loop']['compilations'],
                   'per_image_loop_images_per_s': ev['per_image_loop']['images_per_s']}
  return out


def _ms(v) -> str:
  if v is None:
    return '-'
  return f'{v:.1f}' if v >= 10 else f'{v:.2f}'


def _pct(v) -> str:
  return '-' if v is None else f'{100 * v:.2g}%'


def format_table(r: dict) -> str:
  m = r['machine']
  lines = [f'limijax bench, {r["date"]}',
           f'  {m["platform"]}; CPU {m["cpu"]}, {m["cpu_count"]} cores; Python {m["python"]}',
           f'  jax {m["jax"]} on {m["jax_backend"]} ({m["jax_device"]} x{m["jax_device_count"]}),'
           f' depthwise auto = {m["depthwise_auto"]}; XLA_FLAGS={m["xla_flags"]!r}',
           f'  torch {m["torch"] or "-"} on {m["torch_device"]}, {m["torch_threads"]} threads '
           f'({m["torch_interop_threads"]} inter-op); onnxruntime {m["onnxruntime"] or "-"} '
           f'{m["onnxruntime_providers"] or ""}; OMP_NUM_THREADS={m["omp_num_threads"]}',
           f'  GLIBC_TUNABLES={m["glibc_tunables"]!r} (glibc.malloc.hugetlb=1: huge '
           'pages for every backend\'s buffers)',
           f'  load average at the start: {m["load_average"]} (other work on the machine '
           'slows every figure)']
  p = r['peak']
  lines.append(f'  compute bound: {p["peak"] / 1e9:.1f} GFLOP/s (float32 matmul {p["n"]}: ' +
               ', '.join(f'{k} {v / 1e9:.1f}' for k, v in p['flops_per_s'].items()) + ')')
  lines += [f'  note: {n}' for n in r['notes']]
  lines.append('')
  head = (f'{"row":<24}{"jax ms":>10}{"torch ms":>10}{"compile ms":>11}{"ort ms":>9}'
          f'{"jax/torch":>10}{"GFLOP":>9}{"jax %peak":>10}')
  lines += [head, '-' * len(head)]
  for row in r['rows']:
    ratio = '-' if row['ratio'] is None else f'{row["ratio"]:.2f}'
    gflop = '-' if row['flops'] is None else f'{row["flops"] / 1e9:.2f}'
    lines.append(f'{row["name"]:<24}{_ms(row["jax_ms"]):>10}{_ms(row["torch_eager_ms"]):>10}'
                 f'{_ms(row["torch_compile_ms"]):>11}{_ms(row["onnxruntime_ms"]):>9}'
                 f'{ratio:>10}{gflop:>9}{_pct(row["fraction_of_peak"]):>10}')
  lines.append('(median ms per step, per call, per batch for pipeline rows, per image for '
               'eval rows)')
  firsts = [f'{row["name"]}: ' + ', '.join(f'{k} {v:.1f} s' for k, v in
                                          row['first_call_s'].items())
            for row in r['rows'] if row.get('first_call_s') and 'same_as' not in row]
  if firsts:
    lines += ['', 'first call (compilation included):'] + [f'  {f}' for f in firsts]
  lines += ['', 'findings:']
  for row in r['rows']:
    if row['name'].startswith('train_loop_'):
      rel = row['over_train_step']
      lines.append(f'  real training loop: {row["jax_ms"]:.1f} ms a step over '
                   f'{row["steps_measured"]} steps ({row["steps"]} run, {row["wall_s"]:.0f} s '
                   'in all)' + ('' if rel is None else
                                f', {rel:.3f}x the isolated step '
                                f'({"within" if abs(rel - 1) <= 0.1 else "NOT within"} 10 %)'))
    elif row['name'].startswith('pipeline_its_'):
      rel = row['over_train_step']
      lines.append(f'  input pipeline with ITS ({row["num_workers"]} workers): '
                   f'{row["images_per_s"]:.0f} images/s (start-up {row["startup_s"]:.1f} s)' +
                   ('' if rel is None else f', {rel:.1f}x what the training step consumes '
                    f'({row["train_step_images_per_s"]:.1f} images/s)'))
    elif row['name'].startswith('eval_sizes'):
      ref = row['per_image_loop']
      lines.append(f'  evaluation, {row["images"]} images in {row["padded_shapes"]} padded '
                   f'shapes: evaluate_source {row["images_per_s"]:.1f} images/s, '
                   f'{row["compilations"]} compilations, first pass {row["first_pass_s"]:.1f} s;'
                   f' per-image loop {ref["images_per_s"]:.1f} images/s, {ref["compilations"]} '
                   f'compilations, first pass {ref["first_pass_s"]:.1f} s')
    elif row['ratio'] is not None:
      lines.append(f'  {row["name"]}: JAX takes {row["ratio"]:.2f}x the best PyTorch time')
  return '\n'.join(lines)
