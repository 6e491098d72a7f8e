"""Parameter and GMAC count of Limi-Net: ``python -m limijax.summary --config=...``.

How GMACs are counted (the convention of thop, which the paper and its relatives print
as "FLOPs"): the multiply-accumulates of every convolution in the *inference* graph
(C2F side heads are training-only and not counted) for one image of
``1 x size x size x in_channels``. A convolution with output ``N x H x W x O``, kernel
``k x k`` and ``I / g`` input channels per group costs ``N H W O k k I / g`` MACs; a
transposed convolution costs ``N H_in W_in C_in k k O / g`` (each *input* pixel is
spread over k x k outputs; the zeros that a dilated-input form inserts are not work).
Normalisation, activations, ECA's pooling and bilinear interpolation are not counted:
thop counts no GroupNorm and no functional interpolation, and together they are a few
per cent of the total.

The count is read from the traced inference graph (every ``conv_general_dilated`` with
the grouped depthwise form), so it follows the model as built; a test cross-checks it
against XLA's own cost analysis of the compiled function.

``params`` counts the inference model (what the paper's 0.016 M counts: the C2F side heads
are training-only); ``train_params`` adds the side heads (what a checkpoint holds) and
``side_head_params`` is their share.

Process set-up: run as a command, it first adds an XLA flag and asks glibc for huge pages
(executing itself again once); :mod:`limijax.process` says which, why, and how to turn
each off.
"""

from __future__ import annotations

if __name__ == '__main__':  # a command: process set-up before JAX starts (limijax.process)
  from limijax import process as _process
  _process.set_up_command()

import json
import math

import jax
import jax.extend
import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags

from limijax import model as model_lib
from limijax import defaults
from limijax.errors import UserError, run


def _iter_eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _iter_eqns(sub)


def conv_macs(jaxpr) -> int:
  """MACs of all convolutions in a (closed) jaxpr, thop convention."""
  total = 0
  for eqn in _iter_eqns(jaxpr.jaxpr if hasattr(jaxpr, 'jaxpr') else jaxpr):
    if eqn.primitive.name != 'conv_general_dilated':
      continue
    p = eqn.params
    lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
    out = eqn.outvars[0].aval
    dn = p['dimension_numbers']
    groups = p['feature_group_count']
    k_spatial = math.prod(rhs.shape[i] for i in dn.rhs_spec[2:])
    in_per_group = rhs.shape[dn.rhs_spec[1]]
    out_ch = rhs.shape[dn.rhs_spec[0]]
    if any(d != 1 for d in p['lhs_dilation']):
      # transposed convolution: every input element meets k*k*(O/g) weights
      total += math.prod(lhs.shape) * k_spatial * (out_ch // groups)
    else:
      total += math.prod(out.shape) * k_spatial * in_per_group
  return int(total)


def _grouped(model: model_lib.LimiNet) -> model_lib.LimiNet:
  return model.clone(depthwise='grouped')


def inference_macs(model: model_lib.LimiNet, variables, height: int, width: int | None = None) -> int:
  width = width or height
  m = _grouped(model)
  x = jax.ShapeDtypeStruct((1, height, width, model.in_channels), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda v, x: m.apply(v, x, train=False))(variables, x)
  return conv_macs(jaxpr)


def xla_flops(model: model_lib.LimiNet, variables, height: int, width: int | None = None) -> float:
  """XLA's cost analysis of the compiled inference function (grouped depthwise form)."""
  width = width or height
  m = _grouped(model)
  x = jnp.zeros((1, height, width, model.in_channels), jnp.float32)
  compiled = jax.jit(lambda v, x: m.apply(v, x, train=False)).lower(variables, x).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])


def summarize(config, size: int) -> dict:
  if size % model_lib.STRIDE:
    raise UserError(f'--size must be a multiple of {model_lib.STRIDE}, got {size}')
  model = model_lib.from_config(config)
  variables = model_lib.variable_shapes(model)
  params = variables['params']
  n_params = model_lib.count_params(params)
  side = n_params - model_lib.count_params(model_lib.inference_params(params))
  macs = inference_macs(model, variables, size)
  return {
      'params': n_params - side,
      'params_m': round((n_params - side) / 1e6, 3),
      'train_params': n_params,
      'side_head_params': side,
      'gmacs': macs / 1e9,
      'size': size,
      'in_channels': model.in_channels,
      'model': {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.model.items()},
  }


FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Only when run as a command: importing this module defines no flags.
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_integer('size', 256, 'Square input side for the GMAC count.')
  flags.DEFINE_bool('json', False, 'Print a JSON object as the last stdout line.')


def main(argv):
  s = summarize(defaults.checked(FLAGS.config), FLAGS.size)
  print(f'Limi-Net  stem={s["model"]["stem"]} block={s["model"]["block"]} '
        f'upsampler={s["model"]["upsampler"]} head={s["model"]["head"]} '
        f'norm={s["model"]["norm"]}')
  print(f'parameters: {s["params"]:,} ({s["params_m"]:.3f} M) at inference; '
        f'{s["train_params"]:,} in training, with the C2F side heads\' {s["side_head_params"]:,}')
  print(f'GMACs at 1x{s["size"]}x{s["size"]}x{s["in_channels"]}: {s["gmacs"]:.3f}')
  if FLAGS.json:
    print(json.dumps(s))


if __name__ == '__main__':
  _define_flags()
  run(main)
