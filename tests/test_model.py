"""Limi-Net: parameter budget, shapes for every ablation, jit/grad, bad input."""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from limijax import defaults, errors, losses
from limijax import model as model_lib
from limijax.kernels import init as init_lib
import twin_parity

VARIANTS = twin_parity.VARIANTS


@pytest.fixture(scope='module')
def default_vars():
  return model_lib.init(model_lib.LimiNet(), jax.random.PRNGKey(0))


def _gn(c):  # GroupNorm scale + bias
  return 2 * c


def _lmb(cin, c):  # 1x1 reduce to c/2, dw3 + pw and dw7 + pw branches, 1x1 fuse, ECA (k=3)
  mid = c // 2
  return (cin * mid + _gn(mid) + (9 * mid + mid * mid) + _gn(mid) + (49 * mid + mid * mid)
          + _gn(mid) + 2 * mid * c + _gn(c) + 3 + (cin * c if cin != c else 0))


def _huf(cdeep, c):  # DSTC (dw 4x4 + pw), bilinear 1x1 projection if needed, 1x1 fuse
  return 16 * cdeep + cdeep * c + (cdeep * c if cdeep != c else 0) + 2 * c * c + _gn(c)


def _head(cin):  # SegmentHead: dw 3x3 + pw to 8 + GN, then 1x1 to one logit with bias
  return 9 * cin + 8 * cin + _gn(8) + 8 + 1


def test_default_parameter_count_is_pinned_block_by_block(default_vars):
  p = default_vars['params']
  expected = {
      # SES: standard 3x3 conv 1 -> 4 + GN, dw 3x3 + pw 4 -> 8 + GN, ECA (k = 3 for 8 ch)
      'ses': 9 * 1 * 4 + _gn(4) + 9 * 4 + 4 * 8 + _gn(8) + 3,  # 131
      'lmb1': _lmb(8, 8),  # 403
      'lmb2': _lmb(8, 16),  # 1123
      'lmb3': _lmb(16, 32),  # 3395
      'lmb4': _lmb(32, 32),  # 3139
      'huf1': _huf(32, 32),  # 3648
      'huf2': _huf(32, 16),  # 2080
      'huf3': _huf(16, 8),  # 656
      'huf4': _huf(8, 8),  # 336
      'fastup8': 9 * 32 + 32 * 4 + _gn(4),  # 424: dw 3x3 + pw to 4 + GN
      'fastup4': 9 * 16 + 16 * 4 + _gn(4),  # 216
      'fastup2': 9 * 8 + 8 * 4 + _gn(4),  # 112
      'head': _head(4 + 4 + 4 + 8),  # 365: three FastUp outputs + the last HUF feature
      'side0': _head(4), 'side1': _head(4), 'side2': _head(4),  # 93 each (FastUp x8/x4/x2)
      'side3': _head(8),  # 161 (the last HUF output)
  }
  assert {k: model_lib.count_params(v) for k, v in p.items()} == expected
  n = model_lib.count_params(p)
  inference = model_lib.count_params(model_lib.inference_params(p))
  assert (n, inference, n - inference) == (16468, 16028, 440)
  assert 15_500 <= inference <= 16_499 and round(inference / 1e6, 3) == 0.016


def test_params_per_block_are_where_the_paper_puts_them(default_vars):
  p = default_vars['params']
  # SES (3.2): a *standard* 3x3 conv to 4 channels, then a depthwise-separable conv that
  # raises them to 8.
  assert p['ses']['conv']['kernel'].shape == (3, 3, 1, 4)
  assert p['ses']['dsconv']['dw']['kernel'].shape == (3, 3, 1, 4)
  assert p['ses']['dsconv']['pw']['kernel'].shape == (1, 1, 4, 8)
  # LMB output channels 8, 16, 32, 32 (the fusion 1x1 conv's output).
  assert [p[f'lmb{i}']['fuse']['kernel'].shape[-1] for i in range(1, 5)] == [8, 16, 32, 32]
  # HUF's DSTC stream: a depthwise 4x4 transposed conv on the deeper feature.
  assert p['huf1']['dstc_dw']['kernel'].shape == (4, 4, 1, 32)
  # C2F (3.4, Fig. 4c): every side output has a segment head of its own.
  for i in range(4):
    assert set(p[f'side{i}']) == set(p['head']) == {'dsconv', 'gn', 'logit'}


def test_side_heads_pair_with_the_loss_alphas_coarsest_first(default_vars):
  # side0 must be the x8 output (alpha 0.1), ..., side3 the full-resolution HUF (0.001).
  m = model_lib.LimiNet()
  params = default_vars['params']
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 32, 32, 1))
  apply = jax.jit(lambda p: m.apply({'params': p}, x, train=True))
  _, sides = apply(params)
  # Which side output moves when one decoder path is cut tells its scale.
  for i, path in enumerate(('fastup8', 'fastup4', 'fastup2', 'huf4')):
    cut = jax.tree.map(lambda a: a, params)
    cut[path] = jax.tree.map(jnp.zeros_like, params[path])
    _, cut_sides = apply(cut)
    moved = [not np.allclose(a, b) for a, b in zip(sides, cut_sides)]
    assert moved == [j == i for j in range(4)], (path, moved)
  # ... and the loss weighs side i with alpha i, by value: term = 2000^-a (0.6 SBCE_a + 0.4 Dice).
  y = (jax.random.uniform(jax.random.PRNGKey(2), (1, 32, 32, 1)) > 0.97).astype(jnp.float32)
  final = jnp.zeros((1, 32, 32, 1))
  alphas = defaults.base_config().loss.side_alphas
  assert tuple(alphas) == (0.1, 0.05, 0.01, 0.001)
  _, terms = losses.c2f_loss(final, sides, y, side_alphas=alphas)
  for i, a in enumerate(alphas):
    by_hand = 2000.0 ** (-a) * (0.6 * losses.soft_bce(sides[i], y, a) + 0.4 * losses.dice(sides[i], y))
    np.testing.assert_allclose(terms[f'side{i}'], by_hand, rtol=1e-6)


# Every variant at a square and an oblong size; the default model at the sizes of the
# benchmark too. (Shapes only: every case traces the model twice, about 1.3 s.)
@pytest.mark.parametrize('name, hw', [(name, hw) for name in VARIANTS
                                      for hw in ((32, 32), (64, 96))] +
                         [('default', (256, 256)), ('default', (512, 512))])
def test_output_shapes(name, hw):
  m = model_lib.LimiNet(**VARIANTS[name])
  variables = model_lib.variable_shapes(m)  # traced once per variant
  x = jax.ShapeDtypeStruct((2, *hw, 1), jnp.float32)
  out = jax.eval_shape(lambda v, x: m.apply(v, x, train=False), variables, x)
  assert out.shape == (2, *hw, 1)
  (final, sides), _ = jax.eval_shape(
      lambda v, x: m.apply(v, x, train=True, mutable=['batch_stats']), variables, x)
  assert final.shape == (2, *hw, 1)
  assert len(sides) == (0 if name == 'no_c2f' else 4)
  assert all(s.shape == (2, *hw, 1) for s in sides)


# The paper's model, and every ablation's block at once (the alternative blocks in one
# program: a stem with BatchNorm, residual blocks with BatchNorm, bilinear upsampling),
# with the C2F head (side heads and side losses) and with the plain FPN head.
EVERY_ABLATION = {k: v for name in VARIANTS for k, v in VARIANTS[name].items()}
GRAD_VARIANTS = {'default': {}, 'every_ablation_c2f': {**EVERY_ABLATION, 'head': 'c2f'},
                 'every_ablation_fpn': EVERY_ABLATION}


@pytest.mark.parametrize('variant', GRAD_VARIANTS.values(), ids=list(GRAD_VARIANTS))
def test_jit_grad_finite_on_all_background_and_all_target(variant):
  # The grouped depthwise form, which compiles in half the time of the CPU's default
  # (shift) form: the forms' equality, outputs and gradients of the whole model, is tested
  # in test_depthwise.py.
  m = model_lib.LimiNet(**variant, depthwise='grouped')
  # Random He-scaled weights of the variant's shapes (BatchNorm statistics included):
  # shapes traced, nothing compiled but the loss and its gradient.
  shapes = model_lib.variable_shapes(m)
  params, state = twin_parity.random_variables(
      shapes['params'], {k: v for k, v in shapes.items() if k != 'params'}, seed=1)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 64, 96, 1))

  def loss_fn(params, y):
    (final, sides), _ = m.apply({'params': params, **state}, x, train=True,
                                mutable=['batch_stats'])
    return losses.c2f_loss(final, sides, y)[0]

  value_and_grad = jax.jit(jax.value_and_grad(loss_fn))  # one program for both fills
  for fill in (0.0, 1.0):
    y = jnp.full((2, 64, 96, 1), fill)
    value, grads = value_and_grad(params, y)
    assert np.isfinite(float(value)) and value > 0
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert any(np.abs(np.asarray(g)).max() > 0 for g in leaves)
  # Inference (train=False) of every variant is run, finite and compared with PyTorch at
  # 64x96 and larger in tests/test_torch_twin.py.


@pytest.mark.parametrize('channels', [1, 4, 8, 20, 32])
def test_group_norm_equals_flax_group_norm(channels):
  ours = model_lib.gn(channels)
  ref = nn.GroupNorm(num_groups=min(4, max(1, channels // 2)), epsilon=model_lib.GN_EPS)
  x = 3 * jax.random.normal(jax.random.PRNGKey(channels), (3, 8, 12, channels)) + 1
  v, mine = twin_parity.init_jitted(ref, 0, x), twin_parity.init_jitted(ours, 0, x)
  assert jax.tree.structure(mine) == jax.tree.structure(v)  # names: params/scale, bias
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(v)):
    np.testing.assert_array_equal(a, b)
  rng = np.random.default_rng(5)
  v = jax.tree.map(lambda p: p + rng.standard_normal(p.shape, np.float32), v)

  def run(module):  # values, and gradients w.r.t. parameters and input
    def f(v, x):
      return (module.apply(v, x) ** 3).sum()
    return jax.jit(lambda v, x: (module.apply(v, x), jax.grad(f, argnums=(0, 1))(v, x)))(v, x)

  # The same function; the sums over H and W are added in another order (spatial_sums),
  # so values and gradients agree to float32 rounding, relative to each array's size.
  for a, b in zip(jax.tree.leaves(run(ours)), jax.tree.leaves(run(ref))):
    scale = float(np.abs(np.asarray(b)).max())
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6 * scale)


@pytest.mark.parametrize('shape', [(2, 16, 16, 4), (3, 8, 12, 20), (1, 5, 3, 32),
                                   (2, 4, 4, 1), (1, 3, 5, 8)])
def test_spatial_sums_equal_the_plain_sum_over_height_and_width(shape):
  # Rows of 16 where the channels divide 16 and the image holds whole rows; the plain
  # per-channel reduction otherwise (20 channels; 3x5x8 = 120 values).
  x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
  got = jax.jit(model_lib.spatial_sums)(x)
  want = x.astype(np.float64).sum(axis=(1, 2))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('per_image', [True, False])
def test_broadcast_hw_is_a_broadcast_whose_gradient_sums_over_height_first(per_image):
  n, h, w, c = 3, 40, 12, 8
  rng = np.random.default_rng(7)
  v = rng.standard_normal((n, c) if per_image else (c,)).astype(np.float32)
  x = rng.standard_normal((n, h, w, c)).astype(np.float32)
  plain = (lambda v: v[:, None, None, :]) if per_image else (lambda v: v)

  def loss(v):
    return (jnp.sin(x * model_lib.broadcast_hw(v, x.shape)) ** 2).sum()
  value, grad = jax.jit(lambda v: (model_lib.broadcast_hw(v, x.shape), jax.grad(loss)(v)))(v)
  np.testing.assert_array_equal(value, np.broadcast_to(plain(v), x.shape))
  # The gradient is the sum of the cotangent over H and W (and N), as autodiff's, the
  # additions in another order: worked out in float64 from the cotangent by hand.
  ct = np.asarray(2 * np.sin(x * plain(v)) * np.cos(x * plain(v)) * x, np.float64)
  want = ct.sum(axis=(1, 2) if per_image else (0, 1, 2))
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-4)
  # On a CPU: a sum over H, an optimisation barrier, then the rest (not one sum).
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(v))
  rows = re.search(r'(\w+):f32\[3,12,8\] = reduce_sum\[axes=\(1,\)', jaxpr)
  assert rows, jaxpr
  assert re.search(rf'f32\[3,12,8\] = optimization_barrier {rows.group(1)}\b', jaxpr), jaxpr


def test_inference_does_not_use_side_heads(default_vars):
  m = model_lib.LimiNet()
  x = jax.random.normal(jax.random.PRNGKey(3), (1, 32, 32, 1))
  params = dict(default_vars['params'])
  inference_only = {k: v for k, v in params.items() if not k.startswith('side')}
  infer = jax.jit(lambda p: m.apply({'params': p}, x, train=False))
  a = infer(params)
  b = infer(inference_only)  # would fail if sides were read
  np.testing.assert_array_equal(a, b)
  final, _ = jax.jit(lambda p: m.apply({'params': p}, x, train=True))(params)
  np.testing.assert_allclose(final, a, rtol=1e-6, atol=1e-5)  # GroupNorm: train = eval


def test_batchnorm_stem_updates_stats_in_training_and_uses_them_in_eval():
  m = model_lib.LimiNet(stem='dsconv_bn')
  variables = model_lib.init(m, jax.random.PRNGKey(4))
  x = 3.0 + jax.random.normal(jax.random.PRNGKey(5), (4, 32, 32, 1))
  _, updates = jax.jit(lambda v: m.apply(v, x, train=True, mutable=['batch_stats']))(variables)
  before = variables['batch_stats']['stem_dsconv_bn']['bn']['mean']
  after = updates['batch_stats']['stem_dsconv_bn']['bn']['mean']
  assert not np.allclose(before, after)
  # eval: an image's output does not depend on the rest of the batch
  infer = jax.jit(lambda v, x: m.apply(v, x, train=False))
  one = infer(variables, x[:1])
  many = infer(variables, x)[:1]
  np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-4)


def test_norm_batch_puts_batchnorm_in_every_block_but_ses_with_the_same_parameter_count(
    default_vars):
  m = model_lib.LimiNet(norm='batch')
  shapes = model_lib.variable_shapes(m)
  params, stats = shapes['params'], shapes['batch_stats']
  # The same parameters as the default (a BatchNorm's scale and bias are a GroupNorm's),
  # under bn names outside SES; running means and variances beside them.
  count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))
  assert count(params) == model_lib.count_params(default_vars['params'])
  assert set(params['ses']) == set(default_vars['params']['ses'])  # GroupNorm: gn1, gn2
  for block in ('lmb1', 'huf1', 'fastup8', 'head', 'side3'):
    names = set(params[block])
    assert names == {n.replace('gn', 'bn') for n in default_vars['params'][block]}, block
    assert set(stats[block]) == {n for n in names if n.endswith('bn')}, block
  assert 'ses' not in stats
  cfg = defaults.base_config()
  cfg.model.norm = 'layer'
  with pytest.raises(errors.ConfigError, match=r"model.norm.*group, batch; got 'layer'"):
    defaults.checked(cfg)
  with pytest.raises(ValueError, match='LimiNet.norm'):
    model_lib.LimiNet(norm='layer').init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))


@pytest.mark.parametrize('shape', [(1, 40, 48, 1), (1, 48, 50, 1), (1, 32, 32, 3), (32, 32, 1)])
def test_bad_input_shape_names_expected_shape(shape):
  m = model_lib.LimiNet()
  variables = model_lib.variable_shapes(m)
  with pytest.raises(model_lib.InputShapeError, match=r'\(N, H, W, 1\) with H and W multiples of 16'):
    jax.eval_shape(lambda v: m.apply(v, jnp.zeros(shape), train=False), variables)


SMALL = {'channels': (4, 4, 4, 4), 'stem_channels': 2}  # quick to compile


def test_initialisation_at_xla_level_1_draws_the_default_levels_values(monkeypatch):
  # init() compiles at backend optimisation level 1 on a CPU (faster) unless XLA_FLAGS
  # sets a level. Every initialiser the model uses (he-normal kernels, ECA's normal,
  # GroupNorm's ones and zeros, the logit's constant bias) must then draw exactly what
  # XLA's default level 3 draws; level 0 does not (normal draws round differently), so
  # the test can fail.
  monkeypatch.setenv('XLA_FLAGS', '')
  assert model_lib.init_compiler_options() == {'xla_backend_optimization_level': 1}
  # inside another trace (the train state's shapes) the options are left out: a nested
  # jit refuses them
  shapes = jax.eval_shape(lambda: model_lib.init(model_lib.LimiNet(), jax.random.PRNGKey(0)))
  assert shapes['params']['head']['logit']['bias'].shape == (1,)
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=0')
  assert model_lib.init_compiler_options() is None

  m, x = model_lib.LimiNet(**SMALL), jnp.zeros((1, 32, 32, 1))
  drawn = {level: init_lib._jitted_init(m, (('xla_backend_optimization_level', level),))(  # pylint: disable=protected-access
      jax.random.PRNGKey(7), x) for level in (1, 3)}
  assert jax.tree.structure(drawn[1]) == jax.tree.structure(drawn[3])
  for a, b in zip(jax.tree.leaves(drawn[1]), jax.tree.leaves(drawn[3])):
    np.testing.assert_array_equal(a, b)


def test_init_cuts_two_draws_into_the_kernels_in_creation_order():
  # init() draws one truncated normal and one normal vector and cuts them into the
  # random variables in the order the model creates them; the other variables are flax's
  # constants. Rebuilt here by hand from the two draws.
  m = model_lib.LimiNet(**SMALL)
  key = jax.random.PRNGKey(11)
  got = model_lib.init(m, key)
  assert jax.tree.structure(got) == jax.tree.structure(model_lib.variable_shapes(m))
  # The creation order begins with SES's kernels: the 3x3 conv 1 -> 2, then the
  # separable conv's depthwise 3x3 and pointwise 2 -> 4; then SES's ECA kernel.
  he = [('ses', 'conv', 'kernel'), ('ses', 'dsconv', 'dw', 'kernel'),
        ('ses', 'dsconv', 'pw', 'kernel')]
  k_trunc, k_normal = jax.random.split(key)
  flat = np.asarray(jax.random.truncated_normal(k_trunc, -2.0, 2.0, (1000,)))
  start = 0
  for path in he:
    leaf = got['params']
    for name in path:
      leaf = leaf[name]
    fan_in = int(np.prod(leaf.shape[:-1]))  # kh * kw * C_in
    std = np.sqrt(2 / fan_in) / .87962566103423978  # truncation at 2 std shrinks it
    expected = flat[start:start + leaf.size].reshape(leaf.shape) * std
    np.testing.assert_allclose(leaf, expected, rtol=1e-6, atol=1e-7)
    start += leaf.size
  k = model_lib.eca_kernel_size(4)
  normal = np.asarray(jax.random.normal(k_normal, (k,)))
  np.testing.assert_allclose(got['params']['ses']['eca']['kernel'], normal / np.sqrt(k),
                             rtol=1e-6)
  # The constants; every kernel a piece of its own.
  pieces = []
  for path, a in jax.tree_util.tree_flatten_with_path(got)[0]:
    name, a = jax.tree_util.keystr(path), np.asarray(a)
    if name.endswith("['kernel']"):
      pieces.append(a.ravel())
    elif name.endswith("['logit']['bias']"):  # the prior: background first
      np.testing.assert_array_equal(a, np.float32(model_lib.PRIOR_BIAS), err_msg=name)
    elif name.endswith("['scale']"):  # GroupNorm
      np.testing.assert_array_equal(a, 1.0, err_msg=name)
    else:  # biases of the norms and the 1x1 convolutions
      assert name.endswith("['bias']"), name
      np.testing.assert_array_equal(a, 0.0, err_msg=name)
  values = np.concatenate(pieces)
  assert len(np.unique(values)) == len(values)  # no piece used twice
  # He-normal's spread: all kernels of fan-in 4 (the 1x1 from 4 channels) together
  pw = np.concatenate([np.asarray(a).ravel() for path, a in
                       jax.tree_util.tree_flatten_with_path(got['params'])[0]
                       if a.ndim == 4 and a.shape[:3] == (1, 1, 4)])
  assert len(pw) > 300 and np.std(pw) == pytest.approx(np.sqrt(2 / 4), rel=0.15)
  assert np.abs(pw).max() <= 2 * np.sqrt(2 / 4) / .87962566103423978 + 1e-6


def test_on_an_accelerator_the_initialisation_runs_on_the_host_cpu(monkeypatch):
  # On a CPU backend init() runs where everything runs; with an accelerator as the
  # default backend it draws on the host's CPU (level-1 compile) and hands the variables
  # to the process's first device, with the CPU's values bit for bit.
  m = model_lib.LimiNet(**SMALL)
  assert model_lib.init_device() is None
  options = model_lib.init_compiler_options()
  cpu = jax.local_devices(backend='cpu')[0]
  # The CPU's draws with the inputs on the CPU device (one compilation serves both calls).
  here = init_lib._jitted_init(m, tuple((options or {}).items()))(  # pylint: disable=protected-access
      jax.device_put(jax.random.PRNGKey(5), cpu), jax.device_put(jnp.zeros((1, 32, 32, 1)), cpu))
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert model_lib.init_device() == cpu
  assert model_lib.init_compiler_options() == options  # the CPU's compile either way
  asked = []
  real_init_device = init_lib.init_device
  monkeypatch.setattr(init_lib, 'init_device', lambda: asked.append(1) or real_init_device())
  placed = model_lib.init(m, jax.random.PRNGKey(5))
  assert asked  # init() asked where to draw
  assert jax.tree.structure(placed) == jax.tree.structure(here)
  for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(here)):
    assert a.sharding.device_set == {jax.local_devices()[0]}
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_eca_kernel_size_follows_eca_net():
  # t = int(|log2(C)/2 + 1/2|), odd-ified: C=8 -> 2 -> 3; C=32 -> 3; C=256 -> 4 -> 5; C=1024 -> 5
  assert [model_lib.eca_kernel_size(c) for c in (8, 16, 32, 256, 1024)] == [3, 3, 3, 5, 5]


def test_eca_rescales_each_channel_by_a_sigmoid_gate():
  x = jnp.ones((1, 4, 4, 8)) * jnp.arange(1, 9, dtype=jnp.float32)
  eca = model_lib.ECA()
  v = twin_parity.init_jitted(eca, 0, x)
  k = v['params']['kernel']
  y = eca.apply(v, x)
  means = np.arange(1, 9, dtype=np.float32)
  padded = np.pad(means, 1)
  gate = 1 / (1 + np.exp(-(k[0] * padded[:-2] + k[1] * padded[1:-1] + k[2] * padded[2:])))
  np.testing.assert_allclose(np.asarray(y)[0, 0, 0], means * gate, rtol=1e-5)


def test_from_config_builds_each_ablation_config():
  import pathlib
  root = pathlib.Path(__file__).resolve().parents[1] / 'configs'
  seen, configs = {}, {}
  for path in sorted(itertools.chain(root.glob('*.py'), (root / 'ablations').glob('*.py'))):
    cfg = defaults.checked(defaults.config_from_file(str(path)))
    configs[path.stem] = cfg
    seen[path.stem] = model_lib.from_config(cfg)

  # Each Table 2 row is configs/irstd1k.py with exactly one switch changed.
  base = configs['irstd1k'].to_dict()
  switched = {'no_its': 'data.its.enabled', 'no_ses': 'model.stem', 'no_lmb': 'model.block',
              'no_huf': 'model.upsampler', 'no_c2f': 'model.head',
              'no_c2f_hard': 'loss.side_alphas'}
  for name, key in switched.items():
    assert defaults.diff_keys(base, configs[name].to_dict()) == [key], name
  assert seen['no_ses'].stem == 'dsconv_bn' and seen['no_lmb'].block == 'residual'
  assert seen['no_huf'].upsampler == 'bilinear' and seen['no_c2f'].head == 'fpn'
  assert seen['irstd1k'] == model_lib.LimiNet()


# --------------------------------------------------------------------------- 1x1 as matmul
class _Blocks(model_lib.nn.Module):
  """An LMB (reduce, fuse and shortcut 1x1 convolutions) and a segment head (a 1x1 with
  the prior bias): every kind of 1x1 convolution the model has."""
  pointwise: str = 'conv'

  @model_lib.nn.compact
  def __call__(self, x):
    forms = model_lib.Forms('shift', self.pointwise)
    return model_lib.SegmentHead(forms=forms)(model_lib.LMB(16, forms=forms)(x))


def test_pointwise_as_matmul_has_the_same_parameters_outputs_and_no_grouped_conv_under_vmap():
  m, m_matmul = _Blocks(), _Blocks(pointwise='matmul')
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 16, 24, 8))

  def init(rng):
    return m.init(rng, x)

  def init_matmul(rng):
    return m_matmul.init(rng, x)

  v = jax.jit(init)(jax.random.PRNGKey(0))
  v_matmul = jax.jit(init_matmul)(jax.random.PRNGKey(0))
  # The same tree, every leaf bit for bit (same names, order, keys and initialisers).
  assert jax.tree.structure(v) == jax.tree.structure(v_matmul)
  for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v_matmul)):
    np.testing.assert_array_equal(a, b)
  assert v['params']['SegmentHead_0']['logit']['bias'][0] == pytest.approx(model_lib.PRIOR_BIAS)

  def loss(v, x):
    return jnp.sum(jnp.sin(m.apply(v, x)))

  def loss_matmul(v, x):
    return jnp.sum(jnp.sin(m_matmul.apply(v, x)))

  (value, grads), (value_m, grads_m) = (jax.jit(jax.value_and_grad(f))(v, x)
                                        for f in (loss, loss_matmul))
  assert float(value) == pytest.approx(float(value_m), rel=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_m)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

  # Vectorised over two seeds: the convolution form becomes a feature-grouped
  # convolution, the matrix product does not.
  vs = jax.tree.map(lambda a: jnp.stack([a, a]), v)
  xs = jnp.stack([x, x])
  for f, grouped in ((loss, True), (loss_matmul, False)):
    text = jax.jit(jax.vmap(jax.grad(f))).lower(vs, xs).as_text()
    assert ('feature_group_count = 2' in text) == grouped, f.__name__
