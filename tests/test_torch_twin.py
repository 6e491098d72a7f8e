"""The PyTorch twin and the weight conversion: parity with the flax model for every
variant and size (the twin and its ONNX graph in onnxruntime), exact round trips,
parameter counts and layouts, train mode, and state_dicts that do not fit.

Parity is checked for random weights (every leaf drawn, none at its initial value) and for
the trained weights of the shared tiny run, at 256x256 and 64x96 for every variant and at
512x512 too for the default model (the sizes change no weight's layout: 512x512 is there
for the size the benchmark runs); it costs one JAX compilation per variant and input size
(11). The twin runs every weight set; the ONNX graph is exported and run for every
variant's random weights and for the default model's trained ones (export maps the same
state_dict whatever its values).
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from limijax import summary
from limijax import torch_convert
from limijax import torch_twin
from limijax import workdir as workdir_lib

import twin_parity as tp

MEAN, STD = 80.0, 30.0


@pytest.fixture(scope='module', autouse=True)
def _torch_threads():
  torch.set_num_threads(1)  # the suite runs two test processes on two cores


@pytest.fixture(scope='module')
def random_weights():
  out = {}
  for i, name in enumerate(tp.VARIANTS):
    cfg = tp.config(name)
    # Seed 15 gives the BatchNorm variant logits above 0 everywhere (its random running
    # statistics normalise nothing), an empty comparison of masks: 16 does not.
    seed = 16 if name == 'bn' else 10 + i
    out[name] = (cfg, *tp.random_variables(*tp.template(cfg), seed=seed))
  return out


# --------------------------------------------------------------------------- parity
@pytest.fixture(scope='module')
def trained(tiny_run):
  """The best checkpoint of the shared tiny run (tests/conftest.py): the default model."""
  return workdir_lib.load_run(tiny_run[0])


def _assert_parity(flax_fn, net, session, params, state, x, what, both_classes):
  ref = flax_fn(params, state, x)
  assert ref.shape == x.shape
  if both_classes:
    assert 0 < (ref > 0).mean() < 1, f'{what}: masks all one value, the comparison is empty'
  runs = [('twin', tp.run_twin(net, x))]
  if session is not None:
    runs.append(('onnx', tp.run_onnx(session, x)))
  for backend, got in runs:
    diff = float(np.abs(ref - got).max())
    print(f'{what} {backend}: max |diff| {diff:.2e}')
    assert diff <= tp.TOLERANCE, (what, backend, diff)
    # Masks agree wherever the logit is not within the tolerance of 0.
    sure = np.abs(ref) > tp.TOLERANCE
    assert np.array_equal((ref > 0)[sure], (got > 0)[sure]), (what, backend)


@pytest.mark.parametrize('name', list(tp.VARIANTS))
def test_twin_and_onnx_match_flax_with_random_and_trained_weights(name, random_weights,
                                                                 trained, tmp_path):
  """Random weights; then the tiny run's trained weights, which the ablations get wherever
  their parameters have the same path and shape (everything but the block they replace).
  One jitted JAX function per variant serves both weight sets."""
  cfg, params, state = random_weights[name]
  flax_fn = tp.jax_fn(name)
  params_t, state_t = tp.template(cfg)
  rand_p, rand_s = tp.random_variables(params_t, state_t, seed=99)
  weight_sets = {
      'random': (params, state, MEAN, STD),
      'trained': (tp.transplant(trained.params, params_t, rand_p),
                  tp.transplant(trained.model_state, state_t, rand_s),
                  trained.mean, trained.std)}
  sizes = [hw for hw in tp.SIZES if name == 'default' or hw != (512, 512)]
  for kind, (p, s, mean, std) in weight_sets.items():
    net = tp.twin(cfg, p, s)
    session = None
    if kind == 'random' or name == 'default':
      session = tp.onnx_session(cfg, p, s, tmp_path / f'{name}_{kind}.onnx')
    for h, w in sizes:
      n = 2 if kind == 'random' and h * w < 256 * 256 else 1
      seed = h + w if kind == 'random' else h * w
      x = tp.grey_images(n, h, w, mean, std, seed=seed)
      _assert_parity(flax_fn, net, session, p, s, x, f'{kind} {name} {h}x{w}',
                     both_classes=kind == 'random')


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize('name', list(tp.VARIANTS))
def test_round_trips_are_exact(name, random_weights):
  cfg, params, state = random_weights[name]
  sd = torch_convert.flax_to_state_dict(params, state, cfg)
  # flax -> torch -> flax
  p2, s2 = torch_convert.state_dict_to_flax(sd, cfg)
  for a, b in ((params, p2), (state, s2)):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
      assert x.dtype == y.dtype == np.float32 and np.array_equal(x, y)
  # torch -> flax -> torch, from the twin's own (random) initialisation
  torch.manual_seed(0)
  net = torch_twin.build(cfg)
  if name == 'no_ses':  # give the BatchNorm statistics values of their own
    net.stem_dsconv_bn.bn.running_mean.normal_()
    net.stem_dsconv_bn.bn.running_var.uniform_(0.5, 2.0)
  ref = net.state_dict()
  back = torch_convert.flax_to_state_dict(*torch_convert.state_dict_to_flax(ref, cfg), cfg)
  assert list(back) == list(ref)
  for k, v in ref.items():
    if k.endswith('num_batches_tracked'):  # flax keeps no counter: exported as 0
      assert int(back[k]) == 0
      continue
    assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


# --------------------------------------------------------------------------- counts, layout
@pytest.mark.parametrize('name', list(tp.VARIANTS))
def test_state_dict_counts_the_training_parameters_in_torch_layouts(name, random_weights):
  cfg, params, state = random_weights[name]
  sd = torch_convert.flax_to_state_dict(params, state, cfg)
  stats = ('running_mean', 'running_var', 'num_batches_tracked')
  n = sum(v.numel() for k, v in sd.items() if not k.endswith(stats))
  s = summary.summarize(cfg, 32)
  assert n == s['train_params']  # side heads included, BatchNorm statistics not
  if name == 'default':
    assert (n, s['params']) == (16468, 16028)
  assert sum(p.numel() for p in torch_twin.build(cfg).parameters()) == n
  # Every convolution's weight is in PyTorch's layout, and is the flax kernel transposed.
  flat = {k.replace('/', '.'): v for k, v in torch_convert.flatten(params).items()}
  net = torch_twin.build(cfg)
  convs = 0
  for mname, module in net.named_modules():
    w = sd[f'{mname}.weight'] if isinstance(module, torch.nn.modules.conv._ConvNd) else None
    if w is None:
      continue
    convs += 1
    kernel = flat[f'params.{mname}.kernel']
    if isinstance(module, torch.nn.ConvTranspose2d):  # (in, out / groups, kh, kw)
      assert tuple(w.shape) == (module.in_channels, module.out_channels // module.groups,
                                *module.kernel_size)
    elif isinstance(module, torch.nn.Conv2d):  # OIHW
      assert tuple(w.shape) == (module.out_channels, module.in_channels // module.groups,
                                *module.kernel_size)
    else:  # ECA's Conv1d
      assert tuple(w.shape) == (1, 1, module.kernel_size[0])
      assert np.array_equal(w.numpy().reshape(-1), kernel)
      continue
    assert np.array_equal(w.numpy(), kernel.transpose(3, 2, 0, 1)), mname
  assert convs == sum(1 for k in flat if k.endswith('.kernel'))


# --------------------------------------------------------------------------- train mode
@pytest.mark.parametrize('name', ['default', 'no_ses', 'no_c2f'])
def test_train_mode_returns_final_and_sides_as_flax(name, random_weights):
  from limijax import model as model_lib  # pylint: disable=g-import-not-at-top
  cfg, params, state = random_weights[name]
  m = model_lib.from_config(cfg)
  x = tp.grey_images(2, 64, 96, MEAN, STD, seed=5)
  apply = jax.jit(lambda p, s, x: m.apply({'params': p, **s}, x, train=True,
                                          mutable=list(s)))
  (final, sides), new_state = apply(params, state, x)
  net = tp.twin(cfg, params, state).train()
  with torch.no_grad():
    t_final, t_sides = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  assert len(t_sides) == len(sides) == (0 if name == 'no_c2f' else 4)
  for a, b in zip((final, *sides), (t_final, *t_sides)):
    assert float(np.abs(np.asarray(a) - b.numpy().transpose(0, 2, 3, 1)).max()) <= tp.TOLERANCE
  if name == 'no_ses':
    # Both update the running statistics with momentum 0.1 (flax: 0.9 kept). The mean
    # matches; PyTorch's running variance takes the unbiased batch variance, flax's the
    # biased one: a relative difference of 0.1 / (N H W - 1) at most.
    bn = net.stem_dsconv_bn.bn
    ref = new_state['batch_stats']['stem_dsconv_bn']['bn']
    np.testing.assert_allclose(bn.running_mean.numpy(), ref['mean'], atol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), ref['var'], rtol=1e-4)


# --------------------------------------------------------------------------- errors
def test_state_dict_of_another_model_names_every_bad_key(random_weights):
  cfg, params, state = random_weights['default']
  sd = torch_convert.flax_to_state_dict(params, state, cfg)
  bad = dict(sd)
  del bad['huf2.fuse_gn.bias']
  bad['extra.conv.weight'] = torch.zeros(3)
  bad['lmb1.eca.weight'] = torch.zeros(1, 1, 5)
  with pytest.raises(torch_convert.StateDictMismatch) as e:
    torch_convert.state_dict_to_flax(bad, cfg)
  msg = str(e.value)
  assert '\n' not in msg
  for needle in ('1 missing key(s): huf2.fuse_gn.bias', '1 unexpected key(s): extra.conv.weight',
                 '1 wrongly shaped: lmb1.eca.weight (1, 1, 5) (expected (1, 1, 3))'):
    assert needle in msg, msg
  # The SES model's weights offered to the "w/o SES" model: both stems named.
  with pytest.raises(torch_convert.StateDictMismatch) as e:
    torch_convert.state_dict_to_flax(sd, tp.config('no_ses'))
  assert 'missing key(s): stem_dsconv_bn.' in str(e.value)
  assert 'unexpected key(s): ses.' in str(e.value)
  assert 'stem=dsconv_bn' in str(e.value)


def test_twin_refuses_input_sizes_the_model_cannot_take():
  net = torch_twin.build(tp.config('default')).eval()
  with pytest.raises(ValueError, match='multiples of 16'):
    net(torch.zeros(1, 1, 40, 32))


# --------------------------------------------------------------------------- imports
# The core package's second case also writes a metrics line, TensorBoard event included:
# tensorboardX would import torch when it is installed (1.6 s per training process).
_WRITE_METRICS = ('import tempfile, os\n'
                  'log = importlib.import_module("limijax.run_log").MetricsLog(tempfile.mkdtemp())\n'
                  'log.write("train", step=1, loss=0.5)\n'
                  'assert os.listdir(log.tb_dir), "no TensorBoard file"\n')


@pytest.mark.parametrize('imports, absent, then', [
    (['torch_twin'], 'jax', ''),
    (['model', 'train', 'evaluation', 'workdir', 'run_log', 'predict', 'evaluate', 'export',
      'import_torch', 'torch_convert',
      'onnx_model', 'summary', 'main'], 'torch', _WRITE_METRICS),
])
def test_twin_needs_no_jax_and_the_core_package_no_torch(imports, absent, then):
  code = ('import importlib, sys\n'
          f'for name in {imports!r}: importlib.import_module("limijax." + name)\n'
          f'{then}'
          f'assert {absent!r} not in sys.modules, sorted(sys.modules)\n')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
