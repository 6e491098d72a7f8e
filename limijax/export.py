"""Export a run's best checkpoint for PyTorch, ONNX or any other framework.

    python -m limijax.export --workdir=DIR --out=FILE.{pt,safetensors,onnx,npz} [--check] [--with_normalisation]

The format follows the extension of ``--out``:

* ``.pt`` - ``torch.save`` of ``{'state_dict', 'config', 'normalisation'}``: the
  PyTorch twin's (:mod:`limijax.torch_twin`) ``state_dict`` (side heads included),
  the model config plus ``in_channels`` as a plain dict, and ``{'mean', 'std'}``;
* ``.safetensors`` - the same tensors; ``config`` and ``normalisation`` as JSON strings
  in the file's metadata;
* ``.npz`` - the flax variables by path (``params/ses/conv/kernel``,
  ``batch_stats/stem_dsconv_bn/bn/mean``, ... in flax's layout), ``normalisation/mean``,
  ``normalisation/std`` and ``config`` (a JSON string), for any framework;
* ``.onnx`` - the twin's inference graph (opset 17): input ``image`` float32 NCHW
  ``(N, 1, H, W)``, output ``logits``, batch, height and width dynamic (H and W multiples
  of 16). With ``--with_normalisation`` the graph computes ``(x - mean) / std`` itself and
  takes raw 0..255 grey. Normalisation and config are in ``metadata_props``
  (:mod:`limijax.onnx_model`).

``--check`` then runs the run's JAX model and the exported file (the PyTorch twin for
``.pt`` and ``.safetensors``, onnxruntime for ``.onnx``, the JAX model on the reloaded
arrays for ``.npz``) on every test image of the run at its own size, padded to a multiple
of 16 as evaluation pads it, prints the largest absolute logit difference over the padded
outputs and fails (one line, exit 2) unless it is at most 1e-4 and the masks (logit > 0,
cropped back to each image) are identical.

Process set-up: run as a command, it first adds an XLA flag and asks glibc for huge pages
(executing itself again once); :mod:`limijax.process` says which, why, and how to turn
each off.
"""

from __future__ import annotations

if __name__ == '__main__':  # a command: process set-up before JAX starts (limijax.process)
  from limijax import process as _process
  _process.set_up_command()

import json
import os
import warnings

from absl import flags
from absl import logging
import numpy as np

from limijax import torch_convert
from limijax.errors import UserError, run

FORMATS = ('.pt', '.safetensors', '.onnx', '.npz')
CHECK_TOLERANCE = 1e-4
ONNX_OPSET = 17

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a command (see the end of this file), never on import.
  flags.DEFINE_string('workdir', None, 'A limijax run folder (its best checkpoint).')
  flags.DEFINE_string('out', None, 'The file to write: .pt, .safetensors, .onnx or .npz.')
  flags.DEFINE_bool('check', False, 'Compare the exported model with the JAX model on the '
                    'run\'s test images.')
  flags.DEFINE_bool('with_normalisation', False, '.onnx only: fold (x - mean) / std into '
                    'the graph, so that raw 0..255 grey is the input.')


def format_of(path: str) -> str:
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise UserError(f'--out {path}: unknown extension {ext or "(none)"!r}; use one of '
                    f'{", ".join(FORMATS)}')
  return ext


def model_config(config) -> dict:
  """The plain dict an export stores: ``config.model`` plus ``in_channels``."""
  m = json.loads(config.model.to_json())
  m['in_channels'] = int(config.data.in_channels)
  return m


def _tmp(path: str) -> str:
  return f'{path}.tmp-{os.getpid()}'


def _publish(tmp: str, path: str) -> None:
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)  # as any new file (some writers make theirs private)
  os.replace(tmp, path)


# --------------------------------------------------------------------------- writers
def write_pt(path: str, params, model_state, model_cfg: dict, mean: float, std: float) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  sd = torch_convert.flax_to_state_dict(params, model_state, model_cfg)
  tmp = _tmp(path)
  torch.save({'state_dict': sd, 'config': model_cfg,
              'normalisation': {'mean': float(mean), 'std': float(std)}}, tmp)
  _publish(tmp, path)


def write_safetensors(path: str, params, model_state, model_cfg: dict, mean: float,
                      std: float) -> None:
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  sd = torch_convert.flax_to_state_dict(params, model_state, model_cfg)
  tmp = _tmp(path)
  save_file(dict(sd), tmp, metadata={
      'format': 'pt', 'config': json.dumps(model_cfg),
      'normalisation': json.dumps({'mean': float(mean), 'std': float(std)})})
  _publish(tmp, path)


def write_npz(path: str, params, model_state, model_cfg: dict, mean: float, std: float) -> None:
  arrays = torch_convert.flatten(params, model_state)
  arrays['normalisation/mean'] = np.float64(mean)
  arrays['normalisation/std'] = np.float64(std)
  arrays['config'] = np.array(json.dumps(model_cfg))
  tmp = _tmp(path)
  with open(tmp, 'wb') as f:
    np.savez(f, **arrays)
  _publish(tmp, path)


def twin_from_flax(params, model_state, model_cfg: dict, mean: float | None = None,
                   std: float | None = None):
  """The PyTorch twin in eval mode with these weights; with ``mean``/``std`` wrapped in
  :class:`~limijax.torch_twin.Normalised` (raw grey in)."""
  from limijax import torch_twin  # pylint: disable=g-import-not-at-top
  net = torch_twin.build(model_cfg)
  net.load_state_dict(torch_convert.flax_to_state_dict(params, model_state, model_cfg))
  net.eval()
  if mean is not None:
    net = torch_twin.Normalised(net, mean, std).eval()
  return net


def write_onnx(path: str, params, model_state, model_cfg: dict, mean: float, std: float,
               with_normalisation: bool = False, opset: int = ONNX_OPSET) -> None:
  """The twin's inference graph (see the module docstring), normalisation in metadata."""
  import onnx  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from limijax import onnx_model  # pylint: disable=g-import-not-at-top
  net = twin_from_flax(params, model_state, model_cfg,
                       *((mean, std) if with_normalisation else (None, None)))
  example = torch.zeros(1, model_cfg['in_channels'], 32, 32)
  dynamic = {0: 'batch', 2: 'height', 3: 'width'}
  tmp = _tmp(path)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # the TorchScript exporter's deprecation notice
    torch.onnx.export(net, (example,), tmp, dynamo=False, opset_version=opset,
                      input_names=[onnx_model.INPUT_NAME],
                      output_names=[onnx_model.OUTPUT_NAME],
                      dynamic_axes={onnx_model.INPUT_NAME: dynamic,
                                    onnx_model.OUTPUT_NAME: dynamic},
                      do_constant_folding=True)
  graph = onnx.load(tmp)
  meta = {onnx_model.META_CONFIG: json.dumps(model_cfg),
          onnx_model.META_NORMALISATION: json.dumps({'mean': float(mean), 'std': float(std)}),
          onnx_model.META_IN_GRAPH: 'true' if with_normalisation else 'false'}
  for key, value in meta.items():
    entry = graph.metadata_props.add()
    entry.key, entry.value = key, value
  graph.doc_string = ('Limi-Net (limijax) inference graph: input image float32 (N, 1, H, W), '
                      'H and W multiples of 16, ' + ('raw 0..255 grey' if with_normalisation
                                                     else '(x - mean) / std') +
                      '; output logits (N, 1, H, W), target where > 0.')
  onnx.save(graph, tmp)
  _publish(tmp, path)


def export(params, model_state, model_cfg: dict, mean: float, std: float, out: str,
           with_normalisation: bool = False) -> None:
  """Write ``out`` in the format of its extension."""
  fmt = format_of(out)
  if with_normalisation and fmt != '.onnx':
    raise UserError('--with_normalisation applies to .onnx only')
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  if fmt == '.pt':
    write_pt(out, params, model_state, model_cfg, mean, std)
  elif fmt == '.safetensors':
    write_safetensors(out, params, model_state, model_cfg, mean, std)
  elif fmt == '.npz':
    write_npz(out, params, model_state, model_cfg, mean, std)
  else:
    write_onnx(out, params, model_state, model_cfg, mean, std, with_normalisation)


# --------------------------------------------------------------------------- readers
def read_torch_file(path: str) -> tuple[dict, dict | None, dict | None]:
  """``(state_dict, config or None, normalisation or None)`` of a ``.pt``/``.pth`` (our
  export's dict, or a bare ``state_dict``) or a ``.safetensors`` file."""
  if not os.path.isfile(path):
    raise UserError(f'{path}: no such file')
  if path.lower().endswith('.safetensors'):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    try:
      with safe_open(path, framework='pt') as f:
        meta = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}
      config = json.loads(meta['config']) if 'config' in meta else None
      norm = json.loads(meta['normalisation']) if 'normalisation' in meta else None
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f'{path}: cannot read the safetensors file ({e})') from None
    return sd, config, norm
  import torch  # pylint: disable=g-import-not-at-top
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # torch raises many types
    raise UserError(f'{path}: not a file torch.load can read ({type(e).__name__}: '
                    f'{" ".join(str(e).split())[:300]})') from None
  if isinstance(obj, dict) and isinstance(obj.get('state_dict'), dict):
    return dict(obj['state_dict']), obj.get('config'), obj.get('normalisation')
  if isinstance(obj, dict) and obj and all(isinstance(k, str) and hasattr(v, 'shape')
                                           for k, v in obj.items()):
    return dict(obj), None, None
  raise UserError(f'{path} holds neither a state_dict nor a dict with a "state_dict" entry')


def read_npz(path: str):
  """``(params, model_state, config, normalisation)`` of an ``.npz`` export."""
  with np.load(path, allow_pickle=False) as z:
    flat = {k: z[k] for k in z.files}
  config = json.loads(str(flat.pop('config')))
  norm = {'mean': float(flat.pop('normalisation/mean')),
          'std': float(flat.pop('normalisation/std'))}
  params, state = torch_convert.unflatten(flat)
  return params, state, config, norm


# --------------------------------------------------------------------------- check
def flax_model(model_cfg: dict):
  from limijax import model as model_lib  # pylint: disable=g-import-not-at-top
  return model_lib.from_model_config(model_cfg)


def _exported_runner(path: str, fmt: str):
  """A function (normalised NHWC batch, raw NHWC batch) -> NHWC logits of the file."""
  if fmt in ('.pt', '.safetensors'):
    import torch  # pylint: disable=g-import-not-at-top
    from limijax import torch_twin  # pylint: disable=g-import-not-at-top
    sd, config, _ = read_torch_file(path)
    net = torch_twin.build(config)
    net.load_state_dict(sd)
    net.eval()

    def run_torch(x, raw):
      del raw
      with torch.no_grad():
        y = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
      return y.numpy().transpose(0, 2, 3, 1)
    return run_torch
  if fmt == '.onnx':
    from limijax import onnx_model  # pylint: disable=g-import-not-at-top
    m = onnx_model.OnnxModel(path)
    return lambda x, raw: m.run((raw if m.in_graph else x).transpose(0, 3, 1, 2)).transpose(
        0, 2, 3, 1)
  # .npz: the JAX model on the reloaded arrays
  from limijax import evaluation  # pylint: disable=g-import-not-at-top
  params, state, config, _ = read_npz(path)
  predict = evaluation.make_predict(flax_model(config))
  return lambda x, raw: np.asarray(predict(params, state, x))


def check(trained, path: str, progress: bool = False) -> dict:
  """Compare the run's JAX model with the exported ``path`` on the run's test images;
  ``{'num_images', 'max_abs_diff', 'masks_identical', 'mismatched_images'}``."""
  from limijax import data as data_lib  # pylint: disable=g-import-not-at-top
  from limijax import evaluation, input_pipeline  # pylint: disable=g-import-not-at-top
  fmt = format_of(path)
  exported = _exported_runner(path, fmt)
  predict = evaluation.make_predict(trained.model)
  source = data_lib.load_dataset(trained.config.data).test
  worst, mismatched, n = 0.0, [], 0
  examples = input_pipeline.eval_examples(source, mean=trained.mean, std=trained.std)
  for i, ex in enumerate(examples):
    h, w = ex['size']
    # The same image unnormalised, padded with the mean grey, for a graph that
    # normalises its input itself (0 in the padding once normalised, as ``ex``).
    grey = np.asarray(source[i]['image'], np.float32).reshape(h, w)
    raw = input_pipeline.pad_to_multiple(grey, 16, np.float32(trained.mean))[None, :, :, None]
    ours = np.asarray(predict(trained.params, trained.model_state, ex['image']))
    theirs = np.asarray(exported(ex['image'], raw))
    if theirs.shape != ours.shape:
      raise UserError(f'{path}: output of shape {theirs.shape} for input {ex["image"].shape}')
    worst = max(worst, float(np.max(np.abs(ours - theirs))))
    if not np.array_equal(ours[0, :h, :w, 0] > 0, theirs[0, :h, :w, 0] > 0):
      mismatched.append(ex['id'])
    n += 1
  return {'num_images': n, 'max_abs_diff': worst, 'masks_identical': not mismatched,
          'mismatched_images': mismatched}


# --------------------------------------------------------------------------- command
def main(argv):
  for name in ('workdir', 'out'):
    if not FLAGS[name].value:
      raise UserError(f'--{name} is required')
  logging.set_verbosity(logging.WARNING)  # the checkpoint library's INFO lines
  fmt = format_of(FLAGS.out)
  if FLAGS.with_normalisation and fmt != '.onnx':
    raise UserError('--with_normalisation applies to .onnx only')
  if not os.path.isdir(FLAGS.workdir):
    raise UserError(f'workdir not found: {FLAGS.workdir}')
  if not os.path.isfile(os.path.join(FLAGS.workdir, 'config.json')):
    raise UserError(f'{FLAGS.workdir} holds no config.json: --workdir must be a limijax run '
                    'folder')
  best = os.path.join(FLAGS.workdir, 'checkpoints', 'best')
  if not (os.path.isdir(best) and any(n.isdigit() for n in os.listdir(best))):
    # Checked here, before the checkpoint library starts (and leaves folders behind).
    raise UserError(f'{best} holds no checkpoint yet: nothing to export')
  from limijax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  trained = workdir_lib.load_run(FLAGS.workdir)
  cfg = model_config(trained.config)
  export(trained.params, trained.model_state, cfg, trained.mean, trained.std, FLAGS.out,
         FLAGS.with_normalisation)
  print(f'wrote {FLAGS.out} (best checkpoint of {FLAGS.workdir}, epoch {trained.epoch})',
        flush=True)
  if FLAGS.check:
    r = check(trained, FLAGS.out)
    line = (f'check: {r["num_images"]} test images at their own sizes: max |logit '
            f'difference| {r["max_abs_diff"]:.3g} (limit {CHECK_TOLERANCE:g})')
    if r['max_abs_diff'] > CHECK_TOLERANCE or not r['masks_identical']:
      masks = ('masks identical' if r['masks_identical'] else
               f'masks differ on {len(r["mismatched_images"])} image(s): '
               f'{", ".join(r["mismatched_images"][:5])}')
      raise UserError(f'{line}; {masks}: {FLAGS.out} does not compute the run\'s model')
    print(f'{line}; masks identical')


if __name__ == '__main__':
  _define_flags()
  run(main)
