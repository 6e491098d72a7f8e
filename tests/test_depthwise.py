"""The shift/polyphase depthwise forms equal the grouped convolution and PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as flax_nn

from limijax.kernels import depthwise
from limijax import model as model_lib
import twin_parity


def close(a, b, tol=1e-5):
  """Equal to ``tol`` relative to the array's scale (float32 sums of ~10^3 terms)."""
  a, b = np.asarray(a), np.asarray(b)
  scale = max(1.0, float(np.abs(b).max()))
  np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)


@pytest.fixture(params=['filter_conv', 'reductions'])
def kernel_grad_form(request, monkeypatch):
  """Each form of the shift form's kernel gradients: XLA's filter-gradient convolution
  (the CPU's) and the per-tap reductions other backends use."""
  if request.param == 'reductions':
    monkeypatch.setattr(depthwise, '_FILTER_GRADIENT_CONV_BACKENDS', ())
  return request.param


def _rand(key, shape):
  # numpy's draws: jax.random, called op by op, compiles a program per shape.
  return jnp.asarray(np.random.default_rng(key).standard_normal(shape, np.float32))


def _vjp(f, *args, ct_key):
  """``f(*args)`` and its VJP applied to a random cotangent (key ``ct_key``), in one
  jitted call: executed op by op, every small operation is compiled on its own, which
  made these tests several times slower."""
  def run(*a):
    y, vjp = jax.vjp(f, *a)
    return y, vjp(_rand(ct_key, y.shape))
  return jax.jit(run)(*args)


@pytest.mark.parametrize('k,stride,dilation', [(3, 1, 1), (3, 2, 1), (5, 2, 1), (7, 2, 1), (3, 1, 2)])
def test_depthwise_forms_agree_outputs_and_grads(k, stride, dilation):
  x, w = _rand(0, (2, 12, 18, 5)), _rand(1, (k, k, 1, 5))

  def f(impl):
    def loss(x, w):
      y = depthwise.depthwise_conv(x, w, stride=stride, dilation=dilation, impl=impl)
      return jnp.sum(jnp.sin(y)), y
    (_, y), g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, w)
    return y, g

  (ya, ga), (yb, gb) = f('grouped'), f('shift')
  assert ya.shape == (2, 12 // stride, 18 // stride, 5)
  close(ya, yb)
  for a, b in zip(ga, gb):
    close(a, b)


def _grouped_reference(x, w, stride, dilation):
  """The reference form written out here: XLA's grouped convolution, PyTorch padding."""
  pad = dilation * (w.shape[0] // 2)
  return jax.lax.conv_general_dilated(
      x, w, (stride, stride), ((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1])


@pytest.mark.parametrize('k,stride,dilation,h,w', [
    (3, 1, 1, 9, 7), (3, 2, 1, 9, 7), (7, 1, 1, 11, 13), (7, 2, 1, 11, 13),
    (7, 2, 1, 16, 10), (3, 2, 2, 9, 12), (5, 3, 1, 10, 8)])
def test_hand_written_gradient_equals_autodiff_of_grouped(k, stride, dilation, h, w,
                                                          kernel_grad_form):
  # The shift form's gradient is written by hand (custom VJP); it must equal jax.grad of
  # the grouped convolution on odd and even sizes, stride 1, 2 and 3, kernel 3 to 7.
  x, wt = _rand(11, (2, h, w, 3)), _rand(12, (k, k, 1, 3))
  ref_y, ref_g = _vjp(lambda x, wt: _grouped_reference(x, wt, stride, dilation), x, wt,
                      ct_key=13)
  y, g = _vjp(lambda x, wt: depthwise.depthwise_conv(
      x, wt, stride=stride, dilation=dilation, impl='shift'), x, wt, ct_key=13)
  close(y, ref_y)
  for got, want in zip(g, ref_g):
    assert got.shape == want.shape
    close(got, want)


def test_hand_written_gradient_golden_1d():
  # One channel, one row of 4, kernel 3 (taps w = [1, 10, 100]) stride 2, padding 1:
  # y[0] = 10 x0 + 100 x1, y[1] = x1 + 10 x2 + 100 x3. With cotangent g = [1, 2]:
  # dx = [10, 100 + 2, 20, 200], dw = [0*1 + x1*2, x0*1 + x2*2, x1*1 + x3*2].
  x = jnp.array([3.0, 5.0, 7.0, 11.0]).reshape(1, 1, 4, 1)
  wt = np.zeros((3, 3, 1, 1), np.float32)
  wt[1, :, 0, 0] = [1.0, 10.0, 100.0]
  y, vjp = jax.vjp(lambda x, wt: depthwise.depthwise_conv(x, wt, stride=2, impl='shift'),
                   x, jnp.asarray(wt))
  np.testing.assert_allclose(np.asarray(y).ravel(), [10 * 3 + 100 * 5, 5 + 70 + 1100])
  dx, dw = vjp(jnp.array([1.0, 2.0]).reshape(1, 1, 2, 1))
  np.testing.assert_allclose(np.asarray(dx).ravel(), [10, 102, 20, 200])
  np.testing.assert_allclose(np.asarray(dw)[1, :, 0, 0], [10, 3 + 14, 5 + 22])
  np.testing.assert_allclose(np.asarray(dw)[[0, 2]], 0)  # rows 0, 2 read the zero padding


@pytest.mark.parametrize('h,w', [(5, 7), (4, 6), (1, 3)])
def test_transposed_hand_written_gradient_equals_autodiff_of_grouped(h, w, kernel_grad_form):
  x, wt = _rand(14, (2, h, w, 3)), _rand(15, (4, 4, 1, 3))
  outs = {}
  for impl in ('grouped', 'shift'):
    outs[impl] = _vjp(
        lambda x, wt, impl=impl: depthwise.depthwise_conv_transpose2x(x, wt, impl=impl), x, wt,
        ct_key=16)
  assert outs['shift'][0].shape == (2, 2 * h, 2 * w, 3)
  close(outs['shift'][0], outs['grouped'][0])
  for got, want in zip(outs['shift'][1], outs['grouped'][1]):
    assert got.shape == want.shape
    close(got, want)


def test_hand_written_gradients_under_vmap_and_jit():
  # The training step vmaps over seeds and jits: the custom VJP must batch.
  x, wt = _rand(17, (3, 2, 8, 6, 2)), _rand(18, (3, 7, 7, 1, 2))

  def loss(impl):
    return lambda x, wt: jnp.sum(jnp.tanh(depthwise.depthwise_conv(x, wt, stride=2, impl=impl)))

  got = jax.jit(jax.vmap(jax.grad(loss('shift'), (0, 1))))(x, wt)
  want = jax.jit(jax.vmap(jax.grad(loss('grouped'), (0, 1))))(x, wt)
  for a, b in zip(got, want):
    close(a, b)


def test_transposed_forms_agree_outputs_and_grads():
  x, w = _rand(2, (2, 5, 7, 3)), _rand(3, (4, 4, 1, 3))

  def f(impl):
    loss = lambda x, w: jnp.sum(jnp.cos(depthwise.depthwise_conv_transpose2x(x, w, impl=impl)))
    return (depthwise.depthwise_conv_transpose2x(x, w, impl=impl),
            jax.jit(jax.grad(loss, (0, 1)))(x, w))

  (ya, ga), (yb, gb) = f('grouped'), f('shift')
  assert ya.shape == (2, 10, 14, 3)
  close(ya, yb)
  for a, b in zip(ga, gb):
    close(a, b)


def test_transposed_matches_hand_formula_1d():
  # One channel, a 1 x 3 input; a kernel that is only non-zero in row 1 makes the
  # rows trivial: out[2m] gets x[m] w[1] + x[m-1] w[3], out[2m+1] gets x[m+1] w[0] + x[m] w[2].
  x = jnp.array([1.0, 2.0, 4.0]).reshape(1, 1, 3, 1)
  w = np.zeros((4, 4, 1, 1), np.float32)
  w[1, :, 0, 0] = [10.0, 20.0, 30.0, 40.0]  # w0..w3 along columns, row tap 1 (the even row)
  y = depthwise.depthwise_conv_transpose2x(x, jnp.asarray(w), impl='shift')
  # row 0 (even): columns 0..5 = [1*20, 2*10+1*30, 2*20+1*40, 4*10+2*30, 4*20+2*40, 4*30]
  np.testing.assert_allclose(np.asarray(y)[0, 0, :, 0], [20, 50, 80, 100, 160, 120])
  np.testing.assert_allclose(np.asarray(y)[0, 1, :, 0], 0)  # odd row uses rows 0/2: zero


def test_depthwise_matches_torch():
  x, w = np.asarray(_rand(4, (1, 8, 10, 4))), np.asarray(_rand(5, (5, 5, 1, 4)))
  tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())  # (C, 1, k, k)
  ref = torch.nn.functional.conv2d(tx, tw, stride=2, padding=2, groups=4).numpy()
  y = depthwise.depthwise_conv(jnp.asarray(x), jnp.asarray(w), stride=2, impl='shift')
  np.testing.assert_allclose(np.asarray(y).transpose(0, 3, 1, 2), ref, atol=1e-5)


def test_transposed_matches_torch():
  x, w = np.asarray(_rand(6, (1, 6, 4, 3))), np.asarray(_rand(7, (4, 4, 1, 3)))
  conv = torch.nn.ConvTranspose2d(3, 3, 4, stride=2, padding=1, groups=3, bias=False)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(w.transpose(3, 2, 0, 1).copy()))  # (C, 1, 4, 4)
    ref = conv(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  for impl in ('shift', 'grouped'):
    y = depthwise.depthwise_conv_transpose2x(jnp.asarray(x), jnp.asarray(w), impl=impl)
    np.testing.assert_allclose(np.asarray(y).transpose(0, 3, 1, 2), ref, atol=1e-5)


@pytest.mark.parametrize('factor', [2, 4, 8])
def test_bilinear_matches_torch_align_corners_false(factor):
  x = np.asarray(_rand(8, (1, 3, 5, 2)))
  ref = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                        scale_factor=factor, mode='bilinear',
                                        align_corners=False).numpy()
  y = model_lib.upsample_bilinear(jnp.asarray(x), factor)
  np.testing.assert_allclose(np.asarray(y).transpose(0, 3, 1, 2), ref, atol=1e-5)


def _literal_fastup(x, dw, pw, factor):
  """FastUp's convolutions as the paper draws them: bilinear, then depthwise 3x3 (XLA's
  grouped convolution, zero padding 1), then pointwise."""
  u = model_lib.upsample_bilinear(x, factor)
  return jnp.einsum('nhwc,cd->nhwd', _grouped_reference(u, dw, 1, 1), pw[0, 0])


@pytest.mark.parametrize('factor,h,w,c', [(2, 5, 7, 3), (4, 4, 6, 5), (8, 3, 2, 4), (8, 1, 1, 2),
                                          (3, 4, 5, 2)])
@pytest.mark.parametrize('as_matmul', [False, True])
def test_folded_fastup_equals_upsampling_then_convolving(factor, h, w, c, as_matmul):
  # Odd, even and one-pixel sizes: every border correction (rows, columns, corners) and
  # every phase is exercised; values and all three gradients.
  x, dw, pw = _rand(20, (2, h, w, c)), _rand(21, (3, 3, 1, c)), _rand(22, (1, 1, c, 4))
  ref_y, ref_g = _vjp(lambda *a: _literal_fastup(*a, factor), x, dw, pw, ct_key=23)
  y, g = _vjp(lambda *a: depthwise.upsample_separable_conv(*a, factor, as_matmul=as_matmul),
              x, dw, pw, ct_key=23)
  assert y.shape == (2, factor * h, factor * w, 4)
  close(y, ref_y)
  for a, b in zip(g, ref_g):
    close(a, b)
  # Under vmap (the vectorised seeds map over the kernels too).
  batched = jax.jit(jax.vmap(lambda d, p: depthwise.upsample_separable_conv(
      x, d, p, factor, as_matmul=as_matmul)))
  close(batched(jnp.stack([dw, -dw]), jnp.stack([pw, pw]))[1],
        jax.jit(_literal_fastup, static_argnums=3)(x, -dw, pw, factor))


def test_folded_fastup_has_the_literal_forms_parameters():
  x = _rand(24, (1, 4, 4, 6))
  folded, literal = (model_lib.FastUp(4, forms=model_lib.Forms(d)) for d in ('shift', 'grouped'))
  vf, vl = twin_parity.init_jitted(folded, 3, x), twin_parity.init_jitted(literal, 3, x)
  assert jax.tree.structure(vf) == jax.tree.structure(vl)
  for a, b in zip(jax.tree.leaves(vf), jax.tree.leaves(vl)):
    np.testing.assert_array_equal(a, b)  # same names, shapes and initial values
  close(folded.apply(vl, x), literal.apply(vl, x))


@pytest.mark.parametrize('shape,features,use_bias', [((2, 5, 7, 3), 4, False),
                                                     ((1, 1, 1, 6), 1, True)])
def test_pointwise_conv_equals_flax_conv_in_values_parameters_and_gradients(shape, features,
                                                                          use_bias):
  # The kernel gradient is a matrix product written by hand: it must be autodiff's.
  x = _rand(30, shape)
  ref = flax_nn.Conv(features, (1, 1), use_bias=use_bias, kernel_init=model_lib.conv_init,
                     bias_init=flax_nn.initializers.normal(1.0))
  ours = model_lib.Pointwise(features, use_bias, bias_init=flax_nn.initializers.normal(1.0))
  v_ref, v_ours = twin_parity.init_jitted(ref, 4, x), twin_parity.init_jitted(ours, 4, x)
  assert jax.tree.structure(v_ref) == jax.tree.structure(v_ours)
  for a, b in zip(jax.tree.leaves(v_ref), jax.tree.leaves(v_ours)):
    np.testing.assert_array_equal(a, b)
  want_y, want_g = _vjp(ref.apply, v_ref, x, ct_key=31)
  got_y, got_g = _vjp(ours.apply, v_ref, x, ct_key=31)
  close(got_y, want_y)
  for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    close(a, b)


def _whole_model_loss(m, params, x, y):
  final, sides = m.apply({'params': params}, x, train=True)
  return jnp.mean((jax.nn.sigmoid(final) - y) ** 2) + sum(jnp.mean(s) for s in sides), final


def test_whole_model_same_for_every_impl():
  # The plain reference (flax's grouped convolution, flax.linen.GroupNorm,
  # jax.image.resize and FastUp's literal upsampling) against each fast form: the
  # grouped depthwise with every other fast form, and the CPU's default (shift, folded
  # FastUp). (1x1 convolutions as matrix products: tests/test_model.py.)
  x = _rand(9, (2, 32, 48, 1))
  y = (jax.random.uniform(jax.random.PRNGKey(10), (2, 32, 48, 1)) > 0.9).astype(jnp.float32)
  base = model_lib.LimiNet(depthwise='grouped', groupnorm='flax', bilinear='resize')
  variables = model_lib.init(base, jax.random.PRNGKey(0))
  forms = {'reference': base, 'grouped': model_lib.LimiNet(depthwise='grouped'),
           'shift': model_lib.LimiNet(depthwise='shift')}
  results, jitted = {}, {}
  for name, m in forms.items():
    # jitted: op-by-op execution of the whole model is several times slower to run
    jitted[name] = jax.jit(jax.value_and_grad(
        lambda p, m=m: _whole_model_loss(m, p, x, y), has_aux=True))
    (_, out), grads = jitted[name](variables['params'])
    results[name] = (out, grads)
  # Gradient leaves are float32 sums over every position of the batch (N H W terms), and
  # GroupNorm's backward pass mixes whole groups: rounding error grows with the length of
  # those sums and the scale of the whole gradient, not with one leaf's own size (a small
  # leaf differed by 7.7 % of itself on one CPU). Tolerance: the worst-case rounding of a
  # float32 sum of N H W terms at the gradient's global scale, times 4 for the chain of
  # layers. A real mismatch between the forms is far larger (checked below).
  want_out, want_grads = results['reference']
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(want_grads))
  atol = 4 * x.shape[0] * x.shape[1] * x.shape[2] * np.finfo(np.float32).eps * scale
  for name in ('grouped', 'shift'):
    # logits of magnitude ~6 after ~30 float32 layers: rounding of a few 1e-6 relative
    np.testing.assert_allclose(results[name][0], want_out, rtol=1e-5, atol=1e-5, err_msg=name)
    jax.tree.map(lambda a, b, name=name: np.testing.assert_allclose(
        a, b, rtol=0, atol=atol, err_msg=name), results[name][1], want_grads)
  # The tolerance still tells gradients apart: those of slightly other parameters differ
  # by more than it in some leaf.
  nudged = jax.tree.map(lambda p: p * 1.01, variables['params'])
  _, other = jitted['reference'](nudged)  # the reference's program, other values
  assert max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(other), jax.tree.leaves(want_grads))) > 10 * atol


def test_auto_resolves_to_shift_on_cpu_and_rejects_unknown():
  assert depthwise.resolve_impl('auto') == 'shift'  # the tests run on the CPU backend
  with pytest.raises(ValueError, match='grouped'):
    depthwise.resolve_impl('fast')


def test_one_channel_conv_equals_flax_conv_in_values_parameters_and_gradients():
  # The stem's first conv: same parameters (name, shape, initial values) as nn.Conv and
  # the same outputs and kernel gradient in every form.
  x = _rand(19, (2, 10, 14, 1))
  ref = flax_nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                     kernel_init=model_lib.conv_init)
  ref_vars = twin_parity.init_jitted(ref, 3, x)
  ref_loss = lambda v: jnp.sum(jnp.sin(ref.apply(v, x)))
  want_y, want_g = ref.apply(ref_vars, x), jax.grad(ref_loss)(ref_vars)
  for impl in ('shift', 'grouped'):
    m = model_lib.OneChannelConv(4, impl=impl)
    variables = twin_parity.init_jitted(m, 3, x)
    np.testing.assert_array_equal(variables['params']['kernel'], ref_vars['params']['kernel'])
    close(m.apply(variables, x), want_y)
    g = jax.grad(lambda v: jnp.sum(jnp.sin(m.apply(v, x))))(variables)
    close(g['params']['kernel'], want_g['params']['kernel'])
  # The input gradient (unused in training, but the VJP must give the right shape).
  gx = jax.grad(lambda x: jnp.sum(depthwise.conv_one_channel(x, ref_vars['params']['kernel'],
                                                             impl='shift') ** 2))(x)
  want_gx = jax.grad(lambda x: jnp.sum(ref.apply(ref_vars, x) ** 2))(x)
  assert gx.shape == x.shape
  close(gx, want_gx)
