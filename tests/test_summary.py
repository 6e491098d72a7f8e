"""GMAC counting: hand counts, two independent cross-checks, and the CLI contract."""

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from limijax import model as model_lib
from limijax import summary


def _macs_of(fn, *shapes):
  return summary.conv_macs(jax.make_jaxpr(fn)(*[jnp.zeros(s) for s in shapes]))


def test_conv_macs_by_hand():
  conv = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  v = conv.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))
  # 16 * 16 outputs * 8 channels * 3 * 3 taps * 1 input channel = 18432
  assert _macs_of(lambda x: conv.apply(v, x), (1, 16, 16, 1)) == 18432
  dw = model_lib.DepthwiseConv(3, stride=2, impl='grouped')
  v = dw.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 4)))
  # depthwise stride 2: 8 * 8 outputs * 4 channels * 9 taps * 1 = 2304
  assert _macs_of(lambda x: dw.apply(v, x), (1, 16, 16, 4)) == 2304
  dt = model_lib.DepthwiseConvTranspose(impl='grouped')
  v = dt.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)))
  # transposed (thop): 8 * 8 inputs * 4 channels * 16 taps * (4 / 4) = 4096
  assert _macs_of(lambda x: dt.apply(v, x), (1, 8, 8, 4)) == 4096


@pytest.fixture(scope='module')
def default():
  m = model_lib.LimiNet()
  return m, model_lib.init(m, jax.random.PRNGKey(0))


def _pixels(scale, size=256):  # output pixels at 1/scale of a size x size input
  return (size // scale) ** 2


def _conv(n, cin, cout, k=1):  # n output pixels, k x k kernel: n k k cin cout
  return n * k * k * cin * cout


def _dw(n, c, k=3):  # depthwise: n k k c
  return n * k * k * c


def _lmb(cin, c, s):  # input at 1/s, branches and fusion at 1/2s
  mid, n, h = c // 2, _pixels(s), _pixels(2 * s)
  return (_conv(n, cin, mid) + _dw(h, mid, 3) + _conv(h, mid, mid) + _dw(h, mid, 7)
          + _conv(h, mid, mid) + _conv(h, 2 * mid, c) + (_conv(h, cin, c) if cin != c else 0))


def _huf(cdeep, c, s):  # output at 1/s; DSTC counted per *input* pixel (thop), k = 4
  n, deep = _pixels(s), _pixels(2 * s)
  return (deep * 16 * cdeep + _conv(n, cdeep, c) + (_conv(deep, cdeep, c) if cdeep != c else 0)
          + _conv(n, 2 * c, c))


def test_default_macs_pinned_block_by_block(default):
  m, v = default
  full = _pixels(1)
  expected = (
      _conv(full, 1, 4, 3) + _dw(full, 4) + _conv(full, 4, 8)  # SES: 6,815,744
      + _lmb(8, 8, 1) + _lmb(8, 16, 2) + _lmb(16, 32, 4) + _lmb(32, 32, 8)  # LMB 1-4
      + _huf(32, 32, 8) + _huf(32, 16, 4) + _huf(16, 8, 2) + _huf(8, 8, 1)  # HUF 1-4
      + sum(_dw(full, c) + _conv(full, c, 4) for c in (32, 16, 8))  # FastUp x8, x4, x2
      + _dw(full, 20) + _conv(full, 20, 8) + _conv(full, 8, 1))  # segment head
  assert expected == 124_067_840
  assert summary.inference_macs(m, v, 256) == expected  # 0.124 GMACs, side heads excluded


def test_default_gmacs_in_budget_and_scale_with_area(default):
  m, v = default
  g256 = summary.inference_macs(m, v, 256) / 1e9
  g512 = summary.inference_macs(m, v, 512) / 1e9
  assert 0.116 <= g256 <= 0.156  # paper: 0.136 +- 15 %
  assert g512 == pytest.approx(4 * g256, rel=1e-9)  # every conv's work is proportional to area
  assert summary.inference_macs(m, v, 64, 96) / 1e9 == pytest.approx(g256 * 64 * 96 / 256 ** 2)


def test_gmacs_agree_with_xla_cost_analysis(default):
  # XLA counts 2 flops per MAC plus element-wise work (GroupNorm, ReLU, bilinear
  # stencils, ECA), which we leave out as thop does: its figure must lie between
  # 2 x our MACs and 2 x our MACs + 35 %.
  m, v = default
  macs = summary.inference_macs(m, v, 128)
  flops = summary.xla_flops(m, v, 128)
  assert 2 * macs <= flops <= 2 * macs * 1.35, (macs, flops)


def _run(*args):
  return subprocess.run([sys.executable, '-m', 'limijax.summary', *args],
                        capture_output=True, text=True, timeout=300)


def test_cli_json_contract():
  r = _run('--config=configs/nudt.py', '--json')
  assert r.returncode == 0, r.stderr
  s = json.loads(r.stdout.strip().splitlines()[-1])
  assert (s['params'], s['train_params'], s['side_head_params']) == (16028, 16468, 440)
  assert s['params_m'] == 0.016 and s['size'] == 256
  assert 0.116 <= s['gmacs'] <= 0.156
  assert 'GMACs at 1x256x256x1' in r.stdout


def test_cli_bad_size_and_typo_are_one_line():
  for args, needle in ((('--size=250',), 'multiple of 16'),
                       (('--config.modle.stem=ses',), 'modle'),
                       (('--config.model.stem=tiny',), 'model.stem'),
                       (('stray',), 'unexpected arguments: stray')):
    r = _run('--config=configs/nudt.py', *args)
    assert r.returncode == 2
    assert needle in r.stderr and 'Traceback' not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
