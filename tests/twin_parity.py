"""Helpers shared by tests/test_torch_twin.py and tests/test_export.py (and, for model
variables, tests/test_model.py and tests/test_depthwise.py): the model variants, random
variables, and the three ways to run one set of weights (JAX, the PyTorch twin,
onnxruntime).

The JAX side is one jitted function per variant (:func:`jax_fn`), the weights being
arguments: it is traced and compiled once per input shape for every weight set.
"""

import functools

import numpy as np

VARIANTS = {
    'default': {},
    'no_ses': {'stem': 'dsconv_bn'},
    'no_lmb': {'block': 'residual'},
    'no_huf': {'upsampler': 'bilinear'},
    'no_c2f': {'head': 'fpn'},
    'bn': {'norm': 'batch'},  # BatchNorm outside SES
}
SIZES = [(256, 256), (512, 512), (64, 96)]
TOLERANCE = 1e-4


def config(name):
  from limijax import defaults  # pylint: disable=g-import-not-at-top
  c = defaults.base_config()
  for key, value in VARIANTS[name].items():
    c.model[key] = value
  return c


def template(cfg):
  from limijax import torch_convert  # pylint: disable=g-import-not-at-top
  return torch_convert.flax_template(cfg)


def init_jitted(module, key: int, x):
  """flax's ``module.init`` with ``PRNGKey(key)`` as one compiled program (the same values;
  run op by op it compiles one program per operation)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(module.init)(jax.random.PRNGKey(key), x)


def random_variables(params_t, state_t, seed):
  """Every leaf random (no leaf at its initial value, so that a swapped scale and bias or a
  transposed kernel cannot hide): kernels He-scaled, norms' scales around 1, biases and
  BatchNorm means around 0, variances in [0.5, 2]."""
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    shape = leaf.shape
    if 'kernel' in name and len(shape) == 4:
      fan_in = shape[0] * shape[1] * shape[2]
      return rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
    if 'kernel' in name:  # ECA
      return rng.normal(0, 0.6, shape).astype(np.float32)
    if 'scale' in name:
      return (1 + 0.3 * rng.standard_normal(shape)).astype(np.float32)
    if 'var' in name:
      return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    return (0.3 * rng.standard_normal(shape)).astype(np.float32)  # bias, mean

  return (jax.tree_util.tree_map_with_path(draw, params_t),
          jax.tree_util.tree_map_with_path(draw, state_t))


def transplant(trained_tree, template_tree, random_tree):
  """The trained values where the variant has the same path and shape, else random."""
  if not isinstance(template_tree, dict):
    ok = trained_tree is not None and np.shape(trained_tree) == template_tree.shape
    return np.asarray(trained_tree) if ok else random_tree
  return {k: transplant(trained_tree.get(k) if isinstance(trained_tree, dict) else None,
                        template_tree[k], random_tree[k]) for k in template_tree}


def grey_images(n, h, w, mean, std, seed):
  """Normalised (n, h, w, 1) float32 frames that look like the data: clutter, a few small
  bright blobs."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    img = ndimage.gaussian_filter(rng.normal(0, 25, (h, w)), 3) + 80
    yy, xx = np.mgrid[:h, :w]
    for _ in range(4):
      cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.uniform(1, 3)
      img += 90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    img = np.clip(img + rng.normal(0, 3, (h, w)), 0, 255).astype(np.uint8)
    out.append((img.astype(np.float32) - np.float32(mean)) / np.float32(std))
  return np.stack(out)[..., None]


# XLA's CPU fusion emitters cost about 1.2 s more compile time per program here (2.0 s
# against 0.8 s) and change nothing these tests compare (the flax function, computed in
# float32 to ~1e-5 either way); without the option, plain jit.
_FAST_COMPILE = {'xla_cpu_use_fusion_emitters': False}


class Jax:
  """The flax inference function (``train=False``) of a config, jitted; the weights are
  arguments, so one compilation per input shape serves every weight set."""

  def __init__(self, cfg):
    import jax  # pylint: disable=g-import-not-at-top
    from limijax import model as model_lib  # pylint: disable=g-import-not-at-top
    model = model_lib.from_config(cfg)

    def predict(params, model_state, image):
      return model.apply({'params': params, **model_state}, image, train=False)

    self.plain = jax.jit(predict)
    self.fast = jax.jit(predict, compiler_options=_FAST_COMPILE)

  def __call__(self, params, state, x):
    if self.fast is not None:
      try:
        return np.asarray(self.fast(params, state, x))
      except Exception:  # pylint: disable=broad-except  # an XLA without the option
        self.fast = None
    return np.asarray(self.plain(params, state, x))


@functools.lru_cache(maxsize=None)
def jax_fn(name):
  """:class:`Jax` of variant ``name``, one per process: traced once per input shape for
  every weight set the tests give it."""
  return Jax(config(name))


def twin(cfg, params, state):
  from limijax import torch_convert, torch_twin  # pylint: disable=g-import-not-at-top
  net = torch_twin.build(cfg)
  net.load_state_dict(torch_convert.flax_to_state_dict(params, state, cfg))
  return net.eval()


def run_twin(net, x):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    y = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
  return y.numpy().transpose(0, 2, 3, 1)


def onnx_session(cfg, params, state, path, mean=0.0, std=1.0):
  from limijax import export, onnx_model  # pylint: disable=g-import-not-at-top
  export.write_onnx(str(path), params, state, export.model_config(cfg), mean, std)
  return onnx_model.OnnxModel(str(path))


def run_onnx(session, x):
  return session.run(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)


def compare(ref, got):
  """(max abs difference, whether the masks logit > 0 agree)."""
  return float(np.max(np.abs(ref - got))), bool(np.array_equal(ref > 0, got > 0))
