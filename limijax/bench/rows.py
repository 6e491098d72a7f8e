"""The measured rows: training step, depthwise forms, the real loop, inference, the input
pipeline and evaluation."""

from __future__ import annotations

import collections
import copy
import json
import os
import shutil
import tempfile
from typing import Callable

import numpy as np

from limijax.errors import UserError
from limijax.bench import harness
from limijax.bench.backends import Backends
from limijax.bench.harness import (DEPTHWISE_FORMS, EVAL_SIZES, forward_macs, interleaved,
                                   make_row, train_flops)


def _model(config, impl: str | None = None):
  from limijax import model as model_lib  # pylint: disable=g-import-not-at-top
  if impl is not None:
    config = copy.deepcopy(config)
    config.model.depthwise = impl
  return model_lib.from_config(config)


def _train_batch(batch_size: int, size: int) -> dict:
  rng = np.random.default_rng(0)
  return {'image': rng.standard_normal((batch_size, size, size, 1)).astype(np.float32),
          'mask': (rng.random((batch_size, size, size, 1)) < 0.01).astype(np.float32)}


def jax_train_step(config, impl: str, batch: dict) -> Callable[[], None]:
  import jax  # pylint: disable=g-import-not-at-top
  from limijax import schedule as schedule_lib, train  # pylint: disable=g-import-not-at-top
  model = _model(config, impl)
  tx, schedule = schedule_lib.make_optimizer(config, steps_per_epoch=100)
  step = train.make_train_step(model, tx, schedule, config.loss)
  state = train.init_state(model, tx, train.seed_key(0))  # the weights every backend gets
  dev_batch = jax.device_put(batch)

  def once():
    nonlocal state
    state, out = step(state, dev_batch)
    jax.block_until_ready(out['loss'])
  return once


def torch_train_step(b: Backends, batch: dict, compiled: bool) -> Callable[[], None]:
  from limijax import torch_twin  # pylint: disable=g-import-not-at-top  (torch installed)
  net = b.twin(train=True)
  opt = b.torch.optim.AdamW(net.parameters(), lr=b.config.learning_rate, betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=b.config.weight_decay)
  x, y = b.tensor(batch['image']), b.tensor(batch['mask'])
  loss_cfg = b.config.loss

  def loss_of(x, y):
    final, sides = net(x)
    return torch_twin.c2f_loss(final, sides, y, loss_cfg)[0]
  loss_fn = b.torch.compile(loss_of) if compiled else loss_of

  def once():
    opt.zero_grad(set_to_none=True)
    loss_fn(x, y).backward()
    opt.step()
    b.sync()
  once.model = net  # what the step trains, for callers that look at the weights
  return once


def bench_train(b: Backends, s: dict, peak: float, failed: dict) -> dict:
  from limijax.kernels import depthwise  # pylint: disable=g-import-not-at-top
  bs, size = s['batch_size'], s['image_size']
  batch = _train_batch(bs, size)
  fns = {'jax': jax_train_step(b.config, 'auto', batch)}
  if b.torch is not None:
    fns['torch_eager'] = torch_train_step(b, batch, compiled=False)
    if b.compile_reason is None:
      fns['torch_compile'] = torch_train_step(b, batch, compiled=True)
  name = f'train_b{bs}_{size}'
  ms, first = interleaved(fns, s['repeats'], name, failed)
  flops = train_flops(_model(b.config), _variables(b), bs, size)
  return make_row(name, ms, flops, peak, first_call_s=first,
                  depthwise=depthwise.resolve_impl('auto'),
                  images_per_s=bs / (ms['jax'] / 1e3))


def bench_depthwise(b: Backends, s: dict, peak: float, train_row: dict | None) -> list[dict]:
  from limijax.kernels import depthwise  # pylint: disable=g-import-not-at-top
  bs, size = s['batch_size'], s['image_size']
  batch = _train_batch(bs, size)
  auto = depthwise.resolve_impl('auto')
  fns = {impl: jax_train_step(b.config, impl, batch) for impl in DEPTHWISE_FORMS
         if not (train_row is not None and impl == auto)}
  # JAX alone (no other library to change over from), and the grouped form takes seconds
  # a step on a CPU: one timed call per round after the change-over.
  ms, first = interleaved(fns, s['repeats'], f'train_b{bs}_{size} depthwise forms', burst=1)
  flops = train_flops(_model(b.config), _variables(b), bs, size)
  rows = []
  for impl in DEPTHWISE_FORMS:
    if impl in ms:
      row = make_row(f'train_b{bs}_{size}_{impl}', {'jax': ms[impl]}, flops, peak,
                     first_call_s={'jax': first[impl]})
    else:  # the form auto picks: the train row measured it
      row = make_row(f'train_b{bs}_{size}_{impl}', {'jax': train_row['jax_ms']}, flops, peak,
                     first_call_s={'jax': train_row['first_call_s']['jax']},
                     same_as=train_row['name'])
    row['depthwise'] = impl
    rows.append(row)
  return rows


def _variables(b: Backends) -> dict:
  return {'params': b.params, **b.model_state}


def bench_infer(b: Backends, s: dict, peak: float, failed: dict) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from limijax import evaluation  # pylint: disable=g-import-not-at-top
  model = _model(b.config)
  predict = evaluation.make_predict(model)
  size = s['image_size']
  rows = []
  for batch, side in ((1, size), (1, 2 * size), (16, size)):
    name = f'infer_b{batch}_{side}'
    x = np.random.default_rng(side + batch).standard_normal(
        (batch, side, side, 1)).astype(np.float32)
    jx = jnp.asarray(x)
    fns = {'jax': lambda jx=jx: jax.block_until_ready(predict(b.params, b.model_state, jx))}
    if b.torch is not None:
      eager, compiled = b.eval_nets()
      tx = b.tensor(x)

      def run_torch(net, tx=tx):
        with b.torch.inference_mode():
          net(tx)
        b.sync()
      fns['torch_eager'] = lambda: run_torch(eager)
      if compiled is not None:
        fns['torch_compile'] = lambda: run_torch(compiled)
    if b.ort is not None:
      sess, nchw = b.session(), np.ascontiguousarray(x.transpose(0, 3, 1, 2))
      fns['onnxruntime'] = lambda sess=sess, nchw=nchw: sess.run(None, {'image': nchw})
    ms, first = interleaved(fns, s['repeats'], name, failed)
    flops = 2.0 * forward_macs(model, _variables(b), batch, side, side, train=False)
    rows.append(make_row(name, ms, flops, peak, first_call_s=first,
                         images_per_s=batch / (ms['jax'] / 1e3)))
  return rows


def _pipeline_source(n: int, size: int) -> list[dict]:
  from limijax import synthetic  # pylint: disable=g-import-not-at-top
  # In memory, so the figure is the pipeline's own work, not disk reads.
  return [{'image': im, 'mask': m, 'id': i} for i, im, m in synthetic.generate(n, size, seed=0)]


def bench_pipeline(b: Backends, s: dict, train_row: dict | None, num_workers: int) -> dict:
  from limijax import input_pipeline  # pylint: disable=g-import-not-at-top
  bs, size, k = s['batch_size'], s['image_size'], s['pipeline_batches']
  it = input_pipeline.make_train_iter(
      _pipeline_source(4 * bs, size), image_size=size, batch_size=bs, mean=100.0, std=30.0,
      seed=0, its_cfg=b.config.data.its, num_workers=num_workers)
  t0 = harness.now()
  next(it)  # start-up (worker processes, first batch)
  startup = harness.now() - t0

  def k_batches():
    for _ in range(k):
      next(it)
  suffix = f'_w{num_workers}' if num_workers else ''
  ms, _ = interleaved({'jax': k_batches}, s['repeats'], f'pipeline_its_{size}{suffix}')
  per_batch = ms['jax'] / k
  images_per_s = bs / (per_batch / 1e3)
  consumed = train_row['images_per_s'] if train_row is not None else None
  return make_row(f'pipeline_its_{size}{suffix}', {'jax': per_batch}, None, None,
                  batch_size=bs, num_workers=num_workers, images_per_s=images_per_s,
                  startup_s=startup, train_step_images_per_s=consumed,
                  over_train_step=images_per_s / consumed if consumed else None)


def _loop_num_images(batch_size: int, steps_per_epoch: int) -> int:
  """Images to generate so that the training split holds ``steps_per_epoch`` batches with
  the loop's 5 % test and 5 % validation shares."""
  from limijax.data import splits  # pylint: disable=g-import-not-at-top
  n = batch_size * steps_per_epoch
  while True:
    train = n - splits._share(n, 0.05)  # pylint: disable=protected-access
    if train - splits._share(train, 0.05) >= batch_size * steps_per_epoch:  # pylint: disable=protected-access
      return n
    n += 1


def loop_config(base, batch_size: int, size: int, loop_steps: int, data_dir: str,
                num_workers: int = 0):
  c = copy.deepcopy(base)
  c.data.num_workers = num_workers
  spe = min(loop_steps, c.log_every_steps)  # every log window inside one epoch
  c.data.name = 'synthetic'
  c.data.data_dir = data_dir
  c.data.num_images = _loop_num_images(batch_size, spe)
  c.data.synthetic_size = size
  c.data.image_size = size
  c.data.test_fraction = c.data.val_fraction = 0.05
  c.batch_size = batch_size
  c.num_epochs = -(-loop_steps // spe)
  c.eval_every_epochs = c.num_epochs  # validation once, at the end
  c.tophat_baseline = False
  return c


def loop_step_ms(records: list[dict]) -> tuple[float, int, float]:
  """(ms per step, steps measured, seconds of the first window) from ``metrics.jsonl``
  records: every ``train`` window but the first, whose rate includes compilation. Each
  window's ``steps_per_s`` covers its own steps only (it restarts after validation and
  checkpoints)."""
  train = [r for r in records if r['event'] == 'train']
  seconds, steps, prev = 0.0, 0, 0
  first_s = None
  for r in train:
    n = r['step'] - prev
    prev = r['step']
    if first_s is None:
      first_s = n / r['steps_per_s']
      continue
    seconds += n / r['steps_per_s']
    steps += n
  if not steps:
    raise UserError('--loop_steps: the loop logged a single window; use at least 2 steps')
  return 1e3 * seconds / steps, steps, first_s


def bench_loop(b: Backends, s: dict, train_row: dict | None, peak: float) -> dict:
  from limijax import train  # pylint: disable=g-import-not-at-top
  bs, size, steps = s['batch_size'], s['image_size'], s['loop_steps']
  tmp = tempfile.mkdtemp(prefix='limijax-bench-loop-', dir=b.tmp)
  config = loop_config(b.config, bs, size, steps, os.path.join(tmp, 'data'), s['workers'])
  workdir = os.path.join(tmp, 'run')
  t0 = harness.now()
  train.train_and_evaluate(config, workdir, progress=True)
  wall = harness.now() - t0
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(l) for l in f if l.strip()]
  ms, measured, first_s = loop_step_ms(records)
  shutil.rmtree(tmp, ignore_errors=True)
  step_ms = train_row['jax_ms'] if train_row is not None else None
  flops = train_flops(_model(b.config), _variables(b), bs, size)
  return make_row(f'train_loop_b{bs}_{size}', {'jax': ms}, flops, peak,
                  steps=int(config.num_epochs) * _steps_per_epoch(records), steps_measured=measured,
                  first_window_s=first_s, wall_s=wall, num_images=int(config.data.num_images),
                  over_train_step=ms / step_ms if step_ms else None)


def _steps_per_epoch(records: list[dict]) -> int:
  train = [r for r in records if r['event'] == 'train']
  return max(r['step'] for r in train) // max(r['epoch'] for r in train)


def eval_split(size: int, per_size: int = 2) -> list[dict]:
  """In-memory split of ``EVAL_SIZES`` image sizes around ``size``, none a multiple of
  16, each padded to a different shape: dim backgrounds with a few bright 3x3 targets."""
  u = size // 16
  units = [(u, u), (u, u + 1), (u + 1, u), (u + 1, u + 1), (u, u + 2), (u + 2, u + 1),
           (u + 2, u + 2), (u + 1, u + 3), (u + 3, u + 2), (2 * u + 1, 2 * u + 2)]
  rng = np.random.default_rng(0)
  out = []
  for i, (hu, wu) in enumerate(units[:EVAL_SIZES]):
    h, w = 16 * hu - 1 - i % 5, 16 * wu - 2 - i % 3
    for j in range(per_size):
      image = rng.normal(90, 12, (h, w)).clip(0, 255).astype(np.uint8)
      mask = np.zeros((h, w), np.uint8)
      for _ in range(3):
        y, x = rng.integers(1, h - 2), rng.integers(1, w - 2)
        mask[y - 1:y + 2, x - 1:x + 2] = 1
        image[y - 1:y + 2, x - 1:x + 2] = 230
      out.append({'image': image, 'mask': mask, 'id': f'{h}x{w}_{j}'})
  return out


def per_image_loop(logits_fn: Callable[[np.ndarray], np.ndarray], source, mean: float,
                   std: float) -> dict:
  """The reference evaluation: one call per image at its padded size, then the metrics.
  ``logits_fn`` maps a (1, Hp, Wp, 1) float32 image to (Hp, Wp) logits."""
  from limijax import input_pipeline, metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  acc = metrics_lib.MetricAccumulator()
  for ex in input_pipeline.eval_examples(source, mean=mean, std=std):
    logits = logits_fn(ex['image'])
    pred = metrics_lib.binarize_logits(input_pipeline.crop_to_size(logits, ex['size']))
    acc.update(pred, np.asarray(ex['mask'], bool))
  return acc.result()


def bench_eval(b: Backends, s: dict, peak: float, failed: dict) -> dict:
  from limijax import evaluation, input_pipeline  # pylint: disable=g-import-not-at-top
  source = eval_split(s['image_size'])
  mean, std = 90.0, 12.0
  model = _model(b.config)

  # Jitted functions of their own (not evaluation.make_predict's, which the inference rows
  # share), so that each one's compilations are its own and this row's alone.
  predict, predict_one = evaluation.new_predict(model), evaluation.new_predict(model)

  def jax_ref(image):
    return np.asarray(predict_one(b.params, b.model_state, image))[0, ..., 0]

  fns = {'jax': lambda: evaluation.evaluate_source(predict, b.params, b.model_state, source, mean,
                                              std, desc='eval', progress=False),
         'per_image_loop': lambda: per_image_loop(jax_ref, source, mean, std)}
  if b.torch is not None:
    net, _ = b.eval_nets()

    def torch_logits(image):
      with b.torch.inference_mode():
        out = net(b.tensor(image))
      return out.cpu().numpy()[0, 0]
    fns['torch_eager'] = lambda: per_image_loop(torch_logits, source, mean, std)
  if b.ort is not None:
    sess = b.session()

    def ort_logits(image):
      return sess.run(None, {'image': np.ascontiguousarray(image.transpose(0, 3, 1, 2))})[0][0, 0]
    fns['onnxruntime'] = lambda: per_image_loop(ort_logits, source, mean, std)
  ms, first = interleaved(fns, s['repeats'], f'eval_sizes{EVAL_SIZES}', failed)
  n = len(source)
  per_image = {k: v / n for k, v in ms.items()}
  padded = collections.Counter(tuple(ex['image'].shape[1:3]) for ex in
                               input_pipeline.eval_examples(source, mean=mean, std=std))
  flops = 2.0 * sum(count * forward_macs(model, _variables(b), 1, h, w, train=False)
                    for (h, w), count in padded.items()) / n
  return make_row(
      f'eval_sizes{EVAL_SIZES}', per_image, flops, peak, images=n, padded_shapes=len(padded),
      compilations=_cache_size(predict), first_pass_s=first.get('jax'),
      images_per_s=1e3 / per_image['jax'],
      per_image_loop={'ms': per_image.get('per_image_loop'),
                      'compilations': _cache_size(predict_one),
                      'first_pass_s': first.get('per_image_loop'),
                      'images_per_s': 1e3 / per_image['per_image_loop']},
      first_call_s=first)


def _cache_size(jitted) -> int | None:
  try:
    return int(jitted._cache_size())  # pylint: disable=protected-access
  except AttributeError:
    return None
