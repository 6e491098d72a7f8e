"""Speed of limijax on this machine, side by side with PyTorch and onnxruntime:
``python -m limijax.bench [--json] [--only=train,infer,...]``.

In one process, on the same inputs and the same weights (the flax model's initial
weights, converted exactly to the PyTorch twin and exported to ONNX), it times

* ``train``: one training step, batch ``--batch_size`` (10) at ``--image_size`` (256):
  forward with the C2F side outputs, the C2F loss (eq. 4), backward, AdamW. JAX runs
  :func:`limijax.train.make_train_step`; the twin runs the same loss written in torch
  (:func:`torch_c2f_loss`, equal to :mod:`limijax.losses` to float32 rounding) and
  ``torch.optim.AdamW`` with the same learning rate and weight decay, eagerly and with
  the forward pass and loss under ``torch.compile`` (the backward graph is compiled with
  it, the optimiser update stays eager). Row ``train_b10_256``.
* ``depthwise``: the JAX training step with each depthwise form (``shift``, ``grouped``),
  so that a run on any backend shows which one ``depthwise='auto'`` should pick there.
  Rows ``train_b10_256_shift``, ``train_b10_256_grouped``; the form that ``auto`` picks
  reuses the ``train`` row's measurement when that row is timed too.
* ``loop``: the real training loop, :func:`limijax.train.train_and_evaluate` on a
  synthetic dataset at ``--image_size`` with ITS, for ``--loop_steps`` steps (input
  pipeline, data loading and host bookkeeping included; ``--workers`` Grain worker
  processes when set, as a GPU run would use). The time per step is read from
  the loop's own ``steps_per_s`` log lines, which leave out compilation (the first
  window), validation and checkpoints. Row ``train_loop_b10_256``.
* ``infer``: the inference function (no side heads) at batch 1 (256 and 512) and batch
  16 (256) in all four backends. Rows ``infer_b1_256``, ``infer_b1_512``,
  ``infer_b16_256``.
* ``pipeline``: the Grain training pipeline with ITS (crop, flips, ITS, normalisation,
  batching) over in-memory images, in this process as training uses it. Row
  ``pipeline_its_256``: milliseconds per batch, images per second, and that rate over
  what the training step consumes.
* ``eval``: evaluation of a split of images of 10 different sizes (2 each), metrics
  included: :func:`limijax.evaluation.evaluate_source` against ``per_image_loop``, the plain
  one-jitted-call-per-image loop, each with its number of compilations and its first
  (compiling) pass; the twin and onnxruntime run the same per-image loop. Row
  ``eval_sizes10``, milliseconds per image.

Times are medians over ``--repeats`` interleaved rounds after two warm-up calls: in each
round every backend runs one burst, untimed calls for :data:`CHANGE_OVER_S` (at least
one) and then :data:`BURST` timed calls back to back (one in the JAX-only
depthwise-forms row). A backend's first calls after another library's, or after a
pause, run slowly (no thread spins meanwhile; the cause was not found): on a 2-core CPU,
JAX's inference at batch 1 took 16-21 ms a call for the first few calls after torch's and
10.7 ms from then on; after 0.2 s of untimed calls every backend ran at its own steady
rate, whichever ran before it. The first call, compilation included, is reported apart.
Every row also carries its counted FLOPs (2 per multiply-accumulate of every
convolution, as :mod:`limijax.summary` counts them; a training step counts 3x the
forward pass with side heads) and the fraction of this machine's compute bound they
reach (counted FLOPs / time / the measured rate of a large float32 matmul, the best of
JAX and torch). Names carry the sizes measured: smaller
``--image_size`` or ``--batch_size`` give other names (``train_b2_32``).

Prints the machine (platform, CPU, cores, thread settings, XLA flags, glibc tunables,
versions, JAX backend and device, the depthwise form ``auto`` picks) and a table; with
``--json`` the last stdout line is one JSON object with ``rows``. torch and onnxruntime
are optional: without them their columns are ``null`` and one line says why. Figures are
in BENCHMARKS.md.

Process set-up: run as a command, it first adds an XLA flag and asks glibc for huge pages
(executing itself again once); :mod:`limijax.process` says which, why, and how to turn
each off.
"""

from __future__ import annotations

if __name__ == '__main__':  # a command: process set-up before JAX starts (limijax.process)
  from limijax import process as _process
  _process.set_up_command()

import collections
import copy
import importlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable

from absl import flags
import numpy as np
from tqdm import tqdm

from limijax.errors import UserError, run

FLAGS = flags.FLAGS

GROUPS = ('train', 'depthwise', 'loop', 'infer', 'pipeline', 'eval')
BACKENDS = ('jax', 'torch_eager', 'torch_compile', 'onnxruntime')
TORCH_BACKENDS = ('torch_eager', 'torch_compile')
DEPTHWISE_FORMS = ('shift', 'grouped')
EVAL_SIZES = 10  # distinct image sizes in the evaluated split
BURST = 3  # timed calls in a row per backend and round (interleaved)
CHANGE_OVER_S = 0.2  # untimed calls before each burst, for at least this long


def _define_flags() -> None:
  # Defined only when run as a program, so that importing this module (tests) does not
  # clash with the flags of the other commands.
  flags.DEFINE_bool('json', False, 'End the output with the results as one JSON line.')
  flags.DEFINE_list('only', None, f'Measure only these groups: {",".join(GROUPS)} '
                    '(default: all).')
  flags.DEFINE_integer('repeats', 5, 'Interleaved rounds per row; in each, every backend '
                       f'makes {BURST} timed calls in a row (median of all).')
  flags.DEFINE_integer('loop_steps', None, 'Steps of the real training loop (default 30 '
                       'on a CPU, 300 on an accelerator).')
  flags.DEFINE_integer('batch_size', 10, 'Training batch size (the paper: 10).')
  flags.DEFINE_integer('image_size', 256, 'Training crop and inference side (a multiple '
                       'of 16); the large inference row and the evaluated split scale '
                       'with it.')
  flags.DEFINE_string('torch_device', 'cpu', 'Device of the PyTorch twin: cpu or cuda.')
  flags.DEFINE_bool('no_torch_compile', False, 'Skip torch.compile (slow to compile on '
                    'a CPU).')
  flags.DEFINE_integer('pipeline_batches', 10, 'Batches drawn per pipeline repetition.')
  flags.DEFINE_integer('workers', 0, 'Also time the pipeline with this many Grain worker '
                       'processes, and run the loop row with them (0: in process only, '
                       'as training runs by default).')


# --------------------------------------------------------------------------- timing
def _now() -> float:
  return time.perf_counter()


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, desc: str,
                failed: dict[str, str] | None = None, burst: int = BURST,
                change_over_s: float = CHANGE_OVER_S) -> tuple[dict, dict]:
  """Median milliseconds per call of each function and its first call in seconds.

  Each function is called twice to warm up (the first call, compilation included, is
  timed on its own), then ``repeats`` rounds: in each round every function in turn runs
  one burst, untimed calls until ``change_over_s`` seconds have passed (at least one),
  then ``burst`` timed calls back to back. Rounds interleave the backends, so that a
  machine that slows down or speeds up during the measurement moves every backend alike.
  Bursts keep them apart: a call made right after another library's, or after a pause,
  can run slowly (see the module docstring), and the untimed calls absorb that. A
  function that raises during warm-up is dropped and its reason stored in ``failed``.
  """
  first, live = {}, {}
  bar = tqdm(fns.items(), desc=f'{desc} (first calls)', leave=False)
  for name, fn in bar:
    bar.set_postfix_str(name)  # compiling can take minutes: say what is running
    try:
      t0 = _now()
      fn()
      first[name] = _now() - t0
      fn()
      live[name] = fn
    except Exception as e:  # pylint: disable=broad-except  # a backend that cannot run
      reason = ' '.join(f'{type(e).__name__}: {e}'.split())[:300]
      if failed is None or name not in BACKENDS[1:]:
        raise
      failed[name] = reason
      print(f'{desc}: {name} skipped ({reason})', flush=True)
  times = {name: [] for name in live}
  for _ in tqdm(range(repeats), desc=desc, leave=False):
    for name, fn in live.items():
      t0 = _now()
      fn()  # the change-over, not timed
      while _now() - t0 < change_over_s:
        fn()
      for _ in range(burst):
        t0 = _now()
        fn()
        times[name].append(_now() - t0)
  return {n: 1e3 * statistics.median(t) for n, t in times.items()}, first


# --------------------------------------------------------------------------- torch
def torch_c2f_loss(final, sides, y, loss_cfg):
  """The C2F loss of :func:`limijax.losses.loss_from_config` in torch (NCHW logits):
  the same total and per-scale terms (``final``, ``side0`` ...)."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  eps = float(loss_cfg.dice_eps)

  def scale(logits, alpha):
    t = y * (1.0 - alpha) + (1.0 - y) * alpha  # eq. (1)
    sce = -torch.mean(t * F.logsigmoid(logits) + (1.0 - t) * F.logsigmoid(-logits))  # eq. (2)
    p = torch.sigmoid(logits)
    dice = 1.0 - (2.0 * torch.sum(p * y) + eps) / (torch.sum(p) + torch.sum(y) + eps)  # eq. (3)
    return loss_cfg.lambda_sce * sce + loss_cfg.lambda_dice * dice

  base = float(loss_cfg.weight_base)
  alphas = tuple(loss_cfg.side_alphas)
  if sides and len(sides) != len(alphas):
    raise ValueError(f'{len(sides)} side outputs but {len(alphas)} side alphas')
  terms = {'final': base ** (-loss_cfg.final_alpha) * scale(final, loss_cfg.final_alpha)}
  for i, (logits, alpha) in enumerate(zip(sides, alphas)):
    terms[f'side{i}'] = base ** (-alpha) * scale(logits, alpha)  # eq. (4)
  return sum(terms.values()), terms


class Backends:
  """The optional libraries and the models every row shares."""

  def __init__(self, config, params, model_state, torch_device: str, torch_compile: bool):
    self.config, self.params, self.model_state = config, params, model_state
    self.torch = self.ort = None
    self.torch_reason = self.ort_reason = self.compile_reason = None
    self.device = torch_device
    self.tmp = tempfile.mkdtemp(prefix='limijax-bench-')
    self._session = self._eval_net = self._compiled_eval = None
    try:
      import torch  # pylint: disable=g-import-not-at-top
      self.torch = torch
    except ImportError:
      self.torch_reason = 'torch is not installed (pip install -e ".[torch]")'
    if self.torch is not None and torch_device == 'cuda' and not self.torch.cuda.is_available():
      raise UserError('--torch_device=cuda: torch sees no CUDA device')
    if self.torch is None:
      self.ort_reason = 'exporting the ONNX graph needs torch'
    else:
      try:
        importlib.import_module('onnx')  # the exporter needs it; only its presence counts
        self.ort = importlib.import_module('onnxruntime')
      except ImportError as e:
        self.ort_reason = f'{e.name} is not installed (pip install -e ".[torch]")'
    if not torch_compile:
      self.compile_reason = 'skipped (--no_torch_compile)'
    elif self.torch is None:
      self.compile_reason = self.torch_reason

  def close(self) -> None:
    shutil.rmtree(self.tmp, ignore_errors=True)

  def sync(self) -> None:
    if self.device == 'cuda':
      self.torch.cuda.synchronize()

  def twin(self, train: bool):
    from limijax import torch_convert, torch_twin  # pylint: disable=g-import-not-at-top
    net = torch_twin.build(self.config)
    net.load_state_dict(torch_convert.flax_to_state_dict(self.params, self.model_state,
                                                         self.config))
    return net.train(train).to(self.device)

  def tensor(self, nhwc: np.ndarray):
    return self.torch.from_numpy(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))).to(
        self.device)

  def eval_nets(self):
    """(eager, compiled or None) twins in eval mode, shared by every inference row."""
    if self._eval_net is None:
      self._eval_net = self.twin(train=False)
      if self.compile_reason is None:
        # dynamic=False: one graph per input shape, as JAX compiles one per shape.
        self._compiled_eval = self.torch.compile(copy.deepcopy(self._eval_net), dynamic=False)
    return self._eval_net, self._compiled_eval

  def session(self):
    if self._session is None:
      from limijax import export  # pylint: disable=g-import-not-at-top
      path = os.path.join(self.tmp, 'model.onnx')
      export.write_onnx(path, self.params, self.model_state, export.model_config(self.config),
                        0.0, 1.0)
      providers = ['CPUExecutionProvider']
      if self.device == 'cuda' and 'CUDAExecutionProvider' in self.ort.get_available_providers():
        providers.insert(0, 'CUDAExecutionProvider')
      self._session = self.ort.InferenceSession(path, providers=providers)
    return self._session


# --------------------------------------------------------------------------- machine
def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.lower().startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine(b: Backends) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from limijax import depthwise  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  m = {'platform': platform.platform(), 'cpu': _cpu_model(), 'cpu_count': os.cpu_count(),
       'python': platform.python_version(), 'jax': jax.__version__,
       'jax_backend': jax.default_backend(), 'jax_device': dev.device_kind,
       'jax_device_count': jax.device_count(),
       'depthwise_auto': depthwise.resolve_impl('auto'),
       'xla_flags': os.environ.get('XLA_FLAGS', ''),
       'omp_num_threads': os.environ.get('OMP_NUM_THREADS'),
       'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
       'load_average': [round(x, 2) for x in os.getloadavg()] if hasattr(os, 'getloadavg') else None,
       'torch': None, 'torch_device': b.device, 'torch_threads': None,
       'torch_interop_threads': None, 'onnxruntime': None, 'onnxruntime_providers': None}
  if b.torch is not None:
    m.update(torch=b.torch.__version__, torch_threads=b.torch.get_num_threads(),
             torch_interop_threads=b.torch.get_num_interop_threads())
    if b.device == 'cuda':
      m['torch_device'] = f'cuda ({b.torch.cuda.get_device_name(0)})'
  if b.ort is not None:
    m.update(onnxruntime=b.ort.__version__, onnxruntime_threads='default (0: one per core)',
             onnxruntime_providers=b.ort.get_available_providers())
  return m


def matmul_peak(b: Backends, repeats: int) -> dict:
  """FLOP/s of a large float32 matmul in JAX (and torch on its device): the bound."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = 2048 if jax.default_backend() == 'cpu' else 8192
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  c = rng.standard_normal((n, n), dtype=np.float32)
  ja, jc = jnp.asarray(a), jnp.asarray(c)
  dot = jax.jit(jnp.dot)
  fns = {'jax': lambda: dot(ja, jc).block_until_ready()}
  if b.torch is not None:
    ta, tc = b.torch.from_numpy(a).to(b.device), b.torch.from_numpy(c).to(b.device)

    def torch_mm():
      b.torch.mm(ta, tc)
      b.sync()
    fns['torch'] = torch_mm
  ms, _ = interleaved(fns, max(3, repeats), f'matmul {n}')
  rates = {k: 2.0 * n ** 3 / (v / 1e3) for k, v in ms.items()}
  return {'n': n, 'flops_per_s': rates, 'peak': max(rates.values())}


# --------------------------------------------------------------------------- FLOPs
def forward_macs(model, variables, batch: int, height: int, width: int, train: bool) -> int:
  """Convolution MACs of one forward pass (summary's convention, grouped depthwise form)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from limijax import summary  # pylint: disable=g-import-not-at-top
  m = model.clone(depthwise='grouped')
  x = jax.ShapeDtypeStruct((batch, height, width, model.in_channels), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda v, x: m.apply(v, x, train=train))(variables, x)
  return summary.conv_macs(jaxpr)


def train_flops(model, variables, batch: int, size: int) -> float:
  # Backward = two convolutions (w.r.t. inputs and weights) per forward one.
  return 3 * 2.0 * forward_macs(model, variables, batch, size, size, train=True)


# --------------------------------------------------------------------------- rows
def make_row(name: str, ms: dict, flops: float | None, peak: float | None, **extra) -> dict:
  row = {'name': name, **{f'{k}_ms': ms.get(k) for k in BACKENDS}}
  torch_times = [ms[k] for k in TORCH_BACKENDS if ms.get(k) is not None]
  row['ratio'] = (ms['jax'] / min(torch_times)
                  if ms.get('jax') is not None and torch_times else None)
  row['flops'] = flops
  fractions = {k: (flops / (ms[k] / 1e3) / peak if flops and peak and ms.get(k) else None)
               for k in BACKENDS}
  row['fraction_of_peak'] = fractions['jax']
  row['fractions_of_peak'] = fractions
  row.update(extra)
  return row


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
  net = b.twin(train=True)
  opt = b.torch.optim.AdamW(net.parameters(), lr=b.config.learning_rate, betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=b.config.weight_decay)
  x, y = b.tensor(batch['image']), b.tensor(batch['mask'])
  loss_cfg = b.config.loss

  def loss_of(x, y):
    final, sides = net(x)
    return torch_c2f_loss(final, sides, y, loss_cfg)[0]
  loss_fn = b.torch.compile(loss_of) if compiled else loss_of

  def once():
    opt.zero_grad(set_to_none=True)
    loss_fn(x, y).backward()
    opt.step()
    b.sync()
  once.model = net  # what the step trains, for callers that look at the weights
  return once


def bench_train(b: Backends, s: dict, peak: float, failed: dict) -> dict:
  from limijax import depthwise  # pylint: disable=g-import-not-at-top
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
  from limijax import depthwise  # pylint: disable=g-import-not-at-top
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
  t0 = _now()
  next(it)  # start-up (worker processes, first batch)
  startup = _now() - t0

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
  t0 = _now()
  train.train_and_evaluate(config, workdir, progress=True)
  wall = _now() - t0
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


# --------------------------------------------------------------------------- all
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


# --------------------------------------------------------------------------- output
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


def main(argv):
  del argv
  s = settings(FLAGS.repeats, FLAGS.batch_size, FLAGS.image_size, FLAGS.loop_steps,
               FLAGS.torch_device, not FLAGS.no_torch_compile, FLAGS.pipeline_batches,
               FLAGS.workers, FLAGS.only)
  results = run_all(s)
  print(format_table(results))
  if FLAGS.json:
    sys.stdout.flush()
    print(json.dumps(results))


if __name__ == '__main__':
  _define_flags()
  run(main)
