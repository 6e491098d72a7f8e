"""Speed of limijax on this machine, side by side with PyTorch and onnxruntime:
``python -m limijax.bench [--json] [--only=train,infer,...]``.

In one process, on the same inputs and the same weights (the flax model's initial
weights, converted exactly to the PyTorch twin and exported to ONNX), it times

* ``train``: one training step, batch ``--batch_size`` (10) at ``--image_size`` (256):
  forward with the C2F side outputs, the C2F loss (eq. 4), backward, AdamW. JAX runs
  :func:`limijax.train.make_train_step`; the twin runs the same loss written in torch
  (:func:`limijax.torch_twin.c2f_loss`, equal to :mod:`limijax.losses` to float32 rounding) and
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
pause, run slowly (no thread spins meanwhile; the cause was not found; the figures are
in BENCHMARKS.md); after :data:`CHANGE_OVER_S` of untimed calls every backend ran at its
own steady rate, whichever ran before it. The first call, compilation included, is reported apart.
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

from limijax.bench.backends import Backends
from limijax.bench.harness import (BACKENDS, BURST, CHANGE_OVER_S, DEPTHWISE_FORMS, EVAL_SIZES,
                                   GROUPS, TORCH_BACKENDS, forward_macs, interleaved, machine,
                                   make_row, matmul_peak, train_flops)
from limijax.bench.report import format_table, run_all, settings, summarize
from limijax.bench.rows import (bench_depthwise, bench_eval, bench_infer, bench_loop,
                                bench_pipeline, bench_train, eval_split, jax_train_step,
                                loop_config, loop_step_ms, per_image_loop, torch_train_step)

__all__ = [
    'BACKENDS',
    'BURST',
    'Backends',
    'CHANGE_OVER_S',
    'DEPTHWISE_FORMS',
    'EVAL_SIZES',
    'GROUPS',
    'TORCH_BACKENDS',
    'bench_depthwise',
    'bench_eval',
    'bench_infer',
    'bench_loop',
    'bench_pipeline',
    'bench_train',
    'eval_split',
    'format_table',
    'forward_macs',
    'interleaved',
    'jax_train_step',
    'loop_config',
    'loop_step_ms',
    'machine',
    'make_row',
    'matmul_peak',
    'per_image_loop',
    'run_all',
    'settings',
    'summarize',
    'torch_train_step',
    'train_flops',
]
