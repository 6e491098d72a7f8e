"""Export to PyTorch, safetensors, ONNX and npz, import back, and predict with ONNX, on a
real (tiny) run, as a user runs the commands.

The tiny run of tests/tiny_run.py, trained once per test run (tests/conftest.py), is
shared by every test here. Its trained weights are compared across JAX, the PyTorch twin
and onnxruntime for every variant in tests/test_torch_twin.py.
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import torch

from tiny_run import assert_one_line_error, config_args
import twin_parity as tp
from limijax import evaluation
from limijax import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 300


def _cli(module, *args, env=None):
  return subprocess.run([sys.executable, '-m', module, *map(str, args)], capture_output=True,
                        text=True, timeout=TIMEOUT, cwd=REPO, env=env)


def _ok(proc):
  assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
  return proc


def _hash_tree(root):
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module', autouse=True)
def _torch_threads():
  torch.set_num_threads(1)  # the suite runs two test processes on two cores


@pytest.fixture(scope='module')
def run(tiny_run):
  """The shared tiny run (tests/conftest.py): its results.json and loaded best checkpoint."""
  workdir, results = tiny_run
  return {'workdir': workdir, 'results': results, 'trained': workdir_lib.load_run(workdir)}


@pytest.fixture(scope='module')
def exported_pt(run, tmp_path_factory):
  out = tmp_path_factory.mktemp('exports') / 'limi.pt'
  proc = _cli('limijax.export', f'--workdir={run["workdir"]}', f'--out={out}', '--check')
  return out, proc


def _check_line(proc):
  _ok(proc)
  line = [l for l in proc.stdout.splitlines() if l.startswith('check:')]
  assert len(line) == 1 and line[0].endswith('masks identical'), proc.stdout
  diff = float(line[0].split('max |logit difference| ')[1].split(' ')[0])
  assert diff <= 1e-4
  return diff


# --------------------------------------------------------------------------- export --check
def test_pt_export_checks_and_holds_state_dict_config_normalisation(run, exported_pt):
  from limijax import summary, torch_twin  # pylint: disable=g-import-not-at-top
  out, proc = exported_pt
  print('pt', _check_line(proc))
  saved = torch.load(out, weights_only=True)
  assert set(saved) == {'state_dict', 'config', 'normalisation'}
  trained, results = run['trained'], run['results']
  assert saved['normalisation'] == results['normalisation']
  with open(os.path.join(run['workdir'], 'config.json')) as f:
    stored = json.load(f)
  assert saved['config'] == {**stored['model'], 'in_channels': stored['data']['in_channels']}
  # As many elements as training counts parameters (side heads in, BatchNorm stats out).
  sd = saved['state_dict']
  n = sum(v.numel() for k, v in sd.items()
          if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked')))
  assert n == results['train_params'] == summary.summarize(trained.config, 32)['train_params']
  # Every convolution tensor in PyTorch's layout; plain PyTorch loads the file.
  net = torch_twin.LimiNetTorch.from_config(saved['config'])
  net.load_state_dict(sd)
  for name, module in net.named_modules():
    if isinstance(module, torch.nn.Conv2d):
      assert tuple(sd[f'{name}.weight'].shape) == (
          module.out_channels, module.in_channels // module.groups, *module.kernel_size)


def test_safetensors_export_checks_and_equals_the_pt(run, exported_pt, tmp_path):
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'limi.safetensors'
  print('safetensors', _check_line(
      _cli('limijax.export', f'--workdir={run["workdir"]}', f'--out={out}', '--check')))
  pt = torch.load(exported_pt[0], weights_only=True)
  with safe_open(str(out), framework='pt') as f:
    meta = f.metadata()
    assert sorted(f.keys()) == sorted(pt['state_dict'])
    for k in f.keys():
      assert torch.equal(f.get_tensor(k), pt['state_dict'][k]), k
  assert json.loads(meta['config']) == pt['config']
  assert json.loads(meta['normalisation']) == pt['normalisation']


def test_onnx_export_with_normalisation_checks_dynamic_and_documented(run, tmp_path):
  import onnx  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'limi.onnx'
  print('onnx', _check_line(_cli('limijax.export', f'--workdir={run["workdir"]}', f'--out={out}',
                                 '--check', '--with_normalisation')))
  graph = onnx.load(str(out))
  assert max(o.version for o in graph.opset_import if o.domain in ('', 'ai.onnx')) >= 17
  (inp,), (outp,) = graph.graph.input, graph.graph.output
  for v in (inp, outp):
    dims = v.type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # N, 1, H, W
    assert dims[1].dim_value == 1
  meta = {p.key: p.value for p in graph.metadata_props}
  assert meta['limijax.normalisation_in_graph'] == 'true'
  assert json.loads(meta['limijax.normalisation']) == run['results']['normalisation']


def test_npz_and_plain_onnx_exports_check_in_process(run, tmp_path):
  from limijax import export  # pylint: disable=g-import-not-at-top
  trained = run['trained']
  cfg = export.model_config(trained.config)
  for name in ('limi.npz', 'plain.onnx'):
    out = str(tmp_path / name)
    export.export(trained.params, trained.model_state, cfg, trained.mean, trained.std, out)
    r = export.check(trained, out)
    print(name, r)
    assert r['num_images'] == 10 and r['masks_identical'] and r['max_abs_diff'] <= 1e-4
    if name.endswith('.npz'):
      assert r['max_abs_diff'] == 0.0  # the same JAX program on the same numbers
      with np.load(out) as z:
        assert 'params/ses/conv/kernel' in z.files and z['params/ses/conv/kernel'].shape == (
            3, 3, 1, 4)
        assert float(z['normalisation/mean']) == trained.mean


def test_check_catches_an_export_that_computes_something_else(run, tmp_path):
  from limijax import export  # pylint: disable=g-import-not-at-top
  trained = run['trained']
  params = {**trained.params, 'huf4': {**trained.params['huf4'], 'fuse_gn': {
      'scale': np.asarray(trained.params['huf4']['fuse_gn']['scale']) * np.float32(1.01),
      'bias': trained.params['huf4']['fuse_gn']['bias']}}}
  out = str(tmp_path / 'off.pt')
  export.write_pt(out, params, trained.model_state, export.model_config(trained.config),
                  trained.mean, trained.std)
  r = export.check(trained, out)
  assert r['max_abs_diff'] > 1e-3, r


# --------------------------------------------------------------------------- import_torch
def test_imported_pt_evaluates_exactly_as_the_original_run(run, exported_pt, data_dir,
                                                            tmp_path):
  new = tmp_path / 'imported'
  proc = _ok(_cli('limijax.import_torch', f'--state_dict={exported_pt[0]}',
                  *config_args(data_dir), f'--workdir={new}'))
  assert (new / 'config.json').is_file() and (new / 'checkpoints' / 'best').is_dir()
  assert 'evaluate' in proc.stdout
  original = _ok(_cli('limijax.evaluate', f'--workdir={run["workdir"]}'))
  imported = _ok(_cli('limijax.evaluate', f'--workdir={new}'))
  assert imported.stdout == original.stdout  # the summary line and the METRICS line
  assert json.loads(original.stdout.splitlines()[-1]) == run['results']['test']


def test_import_refuses_a_workdir_that_holds_a_run(run, exported_pt, data_dir):
  before = _hash_tree(run['workdir'])
  proc = _cli('limijax.import_torch', f'--state_dict={exported_pt[0]}',
              *config_args(data_dir), f'--workdir={run["workdir"]}')
  assert_one_line_error(proc, run['workdir'], 'already holds a run')
  assert _hash_tree(run['workdir']) == before


def _twin_state_dict(name, **model):
  from limijax import torch_twin  # pylint: disable=g-import-not-at-top
  cfg = tp.config(name)
  for k, v in model.items():
    cfg.model[k] = v
  torch.manual_seed(0)
  return torch_twin.build(cfg).state_dict()


@pytest.mark.parametrize('kind', ['other_stem', 'edited'])
def test_import_of_another_architecture_names_the_keys(kind, data_dir, tmp_path):
  path = tmp_path / f'{kind}.pt'
  if kind == 'other_stem':  # an export of the "w/o SES" model offered to the SES config
    from limijax import export  # pylint: disable=g-import-not-at-top
    torch.save({'state_dict': _twin_state_dict('no_ses'),
                'config': export.model_config(tp.config('no_ses')),
                'normalisation': {'mean': 80.0, 'std': 30.0}}, path)
    needles = ['missing key(s): ses.conv.weight', 'unexpected key(s): stem_dsconv_bn.',
               "exported from a model with stem='dsconv_bn' (--config: 'ses')"]
  else:  # a bare state_dict with one key of each kind wrong
    sd = _twin_state_dict('default')
    del sd['huf2.fuse_gn.bias']
    sd['extra.weight'] = torch.zeros(3)
    sd['lmb1.eca.weight'] = torch.zeros(1, 1, 5)
    torch.save(sd, path)
    needles = ['1 missing key(s): huf2.fuse_gn.bias', '1 unexpected key(s): extra.weight',
               '1 wrongly shaped: lmb1.eca.weight (1, 1, 5) (expected (1, 1, 3))']
  new = tmp_path / 'new'
  proc = _cli('limijax.import_torch', f'--state_dict={path}', *config_args(data_dir),
              f'--workdir={new}', '--mean=80', '--std=30')
  assert_one_line_error(proc, str(path), 'does not fit', *needles)
  assert not (new / 'config.json').exists() and not (new / 'checkpoints').exists()


def test_import_without_normalisation_asks_for_mean_and_std(run, tmp_path):
  from limijax import import_torch, torch_convert  # pylint: disable=g-import-not-at-top
  from limijax.errors import UserError  # pylint: disable=g-import-not-at-top
  trained = run['trained']
  path = tmp_path / 'bare.pt'
  torch.save(torch_convert.flax_to_state_dict(trained.params, trained.model_state), path)
  with pytest.raises(UserError, match='--mean and --std'):
    import_torch.import_state_dict(str(path), trained.config, str(tmp_path / 'new'))
  assert not (tmp_path / 'new').exists()


# --------------------------------------------------------------------------- export errors
def test_export_without_checkpoint_is_one_line(run, tmp_path):
  empty = tmp_path / 'no_ckpt'
  empty.mkdir()
  (empty / 'config.json').write_text(
      pathlib.Path(run['workdir'], 'config.json').read_text())
  out = tmp_path / 'x.pt'
  assert_one_line_error(_cli('limijax.export', f'--workdir={empty}', f'--out={out}'),
                        'holds no checkpoint')
  assert not out.exists()


def test_export_unknown_extension_is_one_line(run, tmp_path):
  out = tmp_path / 'x.h5'
  assert_one_line_error(_cli('limijax.export', f'--workdir={run["workdir"]}', f'--out={out}'),
                        "unknown extension '.h5'", '.pt, .safetensors, .onnx, .npz')
  assert not out.exists()


# --------------------------------------------------------------------------- predict (ONNX)
def _images(folder):
  rng = np.random.default_rng(0)
  folder.mkdir()
  for name, (h, w) in (('odd', (37, 50)), ('square', (32, 32)), ('tall', (70, 45))):
    img = rng.integers(40, 110, (h, w)).astype(np.uint8)
    for _ in range(3):
      y, x = rng.integers(2, h - 3), rng.integers(2, w - 3)
      img[y - 1:y + 2, x - 1:x + 2] = 250
    Image.fromarray(img).save(folder / f'{name}.png')
    mask = np.zeros((h, w), np.uint8)
    mask[y - 1:y + 2, x - 1:x + 2] = 255  # the last spot is the ground truth
    (folder.parent / 'masks').mkdir(exist_ok=True)
    Image.fromarray(mask).save(folder.parent / 'masks' / f'{name}.png')


def test_predict_with_onnx_backend_equals_jax_and_never_imports_jax(run, tmp_path):
  from limijax import export, image_io, import_torch, input_pipeline  # pylint: disable=g-import-not-at-top
  from limijax import torch_convert  # pylint: disable=g-import-not-at-top
  trained = run['trained']
  inputs = tmp_path / 'in'
  _images(inputs)
  # One epoch leaves the run predicting (almost) no target; shift the final logit bias
  # so that about 2 % of the pixels are targets, away from any logit near 0.
  predict = evaluation.make_predict(trained.model)
  logits = []
  for p in sorted(inputs.iterdir()):
    img = image_io.read_image(str(p))
    x = input_pipeline.pad_to_multiple((img.astype(np.float32) - trained.mean) / trained.std, 16)
    logits.append(np.asarray(predict(trained.params, trained.model_state,
                                     x[None, :, :, None]))[0, :img.shape[0], :img.shape[1], 0])
  values = np.sort(np.concatenate([l.ravel() for l in logits]))
  k = int(0.98 * len(values))
  gaps = np.diff(values[k - 50:k + 50])
  j = k - 50 + int(np.argmax(gaps))  # the widest gap near the 98th percentile
  shift = -float(values[j] + values[j + 1]) / 2
  assert gaps.max() > 1e-3
  params = {**trained.params, 'head': {**trained.params['head'], 'logit': {
      **trained.params['head']['logit'],
      'bias': np.asarray(trained.params['head']['logit']['bias']) + np.float32(shift)}}}
  sd_path = tmp_path / 'shifted.pt'
  torch.save({'state_dict': torch_convert.flax_to_state_dict(params, trained.model_state),
              'normalisation': {'mean': trained.mean, 'std': trained.std}}, sd_path)
  workdir = tmp_path / 'shifted_run'
  import_torch.import_state_dict(str(sd_path), trained.config, str(workdir))
  cfg = export.model_config(trained.config)
  plain, folded = tmp_path / 'plain.onnx', tmp_path / 'folded.onnx'
  export.export(params, trained.model_state, cfg, trained.mean, trained.std, str(plain))
  export.export(params, trained.model_state, cfg, trained.mean, trained.std, str(folded),
                with_normalisation=True)
  # A "jax" that cannot be imported, first on the path: the ONNX backend must not need it.
  blocker = tmp_path / 'blocker' / 'jax'
  blocker.mkdir(parents=True)
  (blocker / '__init__.py').write_text('raise ImportError("jax is not installed here")\n')
  no_jax = dict(os.environ, PYTHONPATH=str(blocker.parent))
  masks = tmp_path / 'masks'
  out = {}
  for key, args, env in (
      ('jax', [f'--workdir={workdir}', f'--mask_dir={masks}'], None),
      ('onnx', ['--backend=onnx', f'--model={plain}', f'--mask_dir={masks}'], no_jax),
      ('folded', ['--backend=onnx', f'--model={folded}'], no_jax)):
    out[key] = tmp_path / f'out_{key}'
    _ok(_cli('limijax.predict', *args, f'--input={inputs}', f'--out={out[key]}', env=env))
  names = sorted(p.name for p in out['jax'].iterdir())
  assert names == ['odd.png', 'odd_overlay.png', 'square.png', 'square_overlay.png',
                   'tall.png', 'tall_overlay.png']
  assert _hash_tree(out['onnx']) == _hash_tree(out['jax'])  # masks and Fig. 5 overlays
  for stem in ('odd', 'square', 'tall'):
    assert ((out['folded'] / f'{stem}.png').read_bytes()
            == (out['jax'] / f'{stem}.png').read_bytes())
  fraction = np.mean([np.asarray(Image.open(out['jax'] / f'{s}.png')).mean() / 255
                      for s in ('odd', 'square', 'tall')])
  assert 0.005 < fraction < 0.1
  # Without jax on the path the JAX backend is what fails.
  proc = _cli('limijax.predict', f'--workdir={workdir}', f'--input={inputs}',
              f'--out={tmp_path / "fails"}', env=no_jax)
  assert proc.returncode != 0
