"""The bench's harness: interleaved timing of several backends, the machine it runs on,
its matmul peak, counted FLOPs, and one row of results."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import TYPE_CHECKING, Callable

import numpy as np
from tqdm import tqdm


if TYPE_CHECKING:
  from limijax.bench.backends import Backends

GROUPS = ('train', 'depthwise', 'loop', 'infer', 'pipeline', 'eval')
BACKENDS = ('jax', 'torch_eager', 'torch_compile', 'onnxruntime')
TORCH_BACKENDS = ('torch_eager', 'torch_compile')
DEPTHWISE_FORMS = ('shift', 'grouped')
EVAL_SIZES = 10  # distinct image sizes in the evaluated split
BURST = 3  # timed calls in a row per backend and round (interleaved)
CHANGE_OVER_S = 0.2  # untimed calls before each burst, for at least this long


def now() -> float:
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
      t0 = now()
      fn()
      first[name] = now() - t0
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
      t0 = now()
      fn()  # the change-over, not timed
      while now() - t0 < change_over_s:
        fn()
      for _ in range(burst):
        t0 = now()
        fn()
        times[name].append(now() - t0)
  return {n: 1e3 * statistics.median(t) for n, t in times.items()}, first


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
  from limijax.kernels import depthwise  # pylint: disable=g-import-not-at-top
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
