"""The training CLI and the commands that read a run, used as a user uses them.

One tiny run (50 synthetic 32x32 images, 2 epochs of 8 steps) is trained once per module
through ``python -m limijax.main`` and shared by every test here: its workdir is checked,
re-run, killed-and-resumed against, evaluated and predicted with. All subprocesses share
the persistent compilation cache that conftest.py sets, so only the first one compiles.

Every flag of the tiny run is also a non-default override of a key the README lists for
every config, so config.json shows that each of them is accepted and recorded.

The training runs here compile with XLA's own settings (conftest.py lowers the
optimisation level for the rest of the suite), so that bit-exact resume is shown for the
code users run. Their depthwise convolutions take the grouped form, as the tiny run of
tests/tiny_run.py does: at XLA's default level the training step traces and compiles in
about half the time of the CPU's default (shift) form (15 against 27 s on a 2-core CPU);
the forms' equality, outputs and gradients, is tested in tests/test_depthwise.py.
"""

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from scipy import ndimage

from limijax import workdir as workdir_lib
from limijax import run_log
from limijax import evaluation
from tiny_run import assert_one_line_error, kill_when

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / 'configs' / 'synthetic.py')
METRICS_KEYS = ('miou', 'niou', 'pd', 'fa', 'fa_e6', 'num_images', 'num_targets')
EPOCHS, STEPS_PER_EPOCH = 2, 8  # 50 images: 10 test, 8 val, 32 train / batch 4

# Every key the README lists for every config, each away from its configs/synthetic.py value.
OVERRIDES = {
    'seed': 1,
    'data.root': '/unused/by/synthetic',
    'data.split_seed': 1,
    'num_epochs': EPOCHS,
    'batch_size': 4,
    'eval_every_epochs': 1,
    'data.image_size': 32,
    'data.num_images': 50,
}


def main_args(workdir, data_dir, **extra):
  # ITS on (the synthetic config turns it off), so that resume covers its random draws too.
  overrides = {**OVERRIDES, 'data.synthetic_size': 32, 'data.data_dir': data_dir,
               'data.its.enabled': True, 'model.depthwise': 'grouped', **extra}
  return [sys.executable, '-m', 'limijax.main', f'--config={CONFIG}', f'--workdir={workdir}',
          *(f'--config.{k}={v}' for k, v in overrides.items()), '--progress=false']


# XLA's own settings, as users run it (conftest.py lowers the optimisation level for the
# rest of the suite).
USER_ENV = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}


def _run(args, timeout=300, cwd=REPO, env=USER_ENV):
  return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def _cli(module, *args, timeout=120):
  return _run([sys.executable, '-m', module, *args], timeout=timeout)


def _last_json(proc):
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _hash_tree(root) -> dict:
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob('*')) if p.is_file()}


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f if l.strip()]


def _without_wall_time(records):  # and the other times of this machine
  return [{k: v for k, v in r.items() if k not in run_log.TIMING_KEYS}
          for r in records]


def _steps(folder):
  return sorted(int(p.name) for p in pathlib.Path(folder).iterdir() if p.name.isdigit())


def _restore(path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.StandardCheckpointer().restore(str(path))


def _assert_trees_identical(a, b):
  import jax  # pylint: disable=g-import-not-at-top
  la, ta = jax.tree_util.tree_flatten_with_path(a)
  lb, tb = jax.tree_util.tree_flatten_with_path(b)
  assert ta == tb
  for (path, x), (_, y) in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    assert np.array_equal(x, y, equal_nan=True), f'{jax.tree_util.keystr(path)} differs'


@pytest.fixture(scope='module')
def run(tmp_path_factory, data_dir):
  """The tiny run, trained once, uninterrupted."""
  workdir = str(tmp_path_factory.mktemp('run') / 'w')
  args = main_args(workdir, data_dir)
  proc = _run(args)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return {'workdir': workdir, 'args': args, 'proc': proc}


# --------------------------------------------------------------------------- 1. the workdir
def test_run_writes_the_contract_workdir(run):
  w = run['workdir']
  for name in ('config.json', 'metrics.jsonl', 'results.json', 'curves.png'):
    assert os.path.isfile(os.path.join(w, name)), name
  assert _steps(os.path.join(w, 'checkpoints', 'latest')) == [EPOCHS * STEPS_PER_EPOCH]
  assert len(_steps(os.path.join(w, 'checkpoints', 'best'))) == 1
  assert any(p.name.startswith('events.out.tfevents') for p in pathlib.Path(w, 'tb').iterdir())
  with Image.open(os.path.join(w, 'curves.png')) as im:
    assert im.format == 'PNG' and im.size[0] > 100 and im.size[1] > 100

  records = _records(w)
  train = [r for r in records if r['event'] == 'train']
  val = [r for r in records if r['event'] == 'val']
  assert train and val
  for r in train:
    for key in ('step', 'epoch', 'loss', 'lr', 'wall_time'):
      assert key in r, (key, r)
    assert np.isfinite(r['loss']) and r['lr'] > 0
  assert [r['epoch'] for r in val] == list(range(1, EPOCHS + 1))  # eval_every_epochs=1
  assert [r['step'] for r in val] == [STEPS_PER_EPOCH * e for e in range(1, EPOCHS + 1)]
  for r in val:
    for key in ('step', 'epoch', 'wall_time', 'miou', 'niou', 'pd', 'fa'):
      assert key in r, (key, r)
  steps = [r['step'] for r in records if r['event'] in ('train', 'val')]
  assert steps == sorted(steps)

  with open(os.path.join(w, 'results.json')) as f:
    results = json.load(f)
  assert results['best_epoch'] in range(1, EPOCHS + 1)
  assert results['steps'] == EPOCHS * STEPS_PER_EPOCH
  for part in (results['val'], results['test'], results['baselines']['tophat']):
    for key in METRICS_KEYS:
      assert key in part, key
    assert 0.0 <= part['miou'] <= 1 and 0.0 <= part['niou'] <= 1 and 0.0 <= part['pd'] <= 1
    assert part['fa_e6'] == pytest.approx(part['fa'] * 1e6)
  assert results['test']['num_images'] == 10
  assert results['baselines']['tophat']['num_images'] == 10
  assert results['val']['num_images'] == 8
  # results.val is the validation line of the best epoch.
  best_val = [r for r in val if r['epoch'] == results['best_epoch']][0]
  assert {k: best_val[k] for k in METRICS_KEYS} == {k: results['val'][k] for k in METRICS_KEYS}

  last = _last_json(run['proc'])
  assert last['test'] == results['test']
  assert last['tophat']['miou'] == results['baselines']['tophat']['miou']


def test_every_contract_key_override_is_recorded(run):
  with open(os.path.join(run['workdir'], 'config.json')) as f:
    stored = json.load(f)
  for key, value in OVERRIDES.items():
    node = stored
    for part in key.split('.'):
      node = node[part]
    assert node == value, key


# --------------------------------------------------------------------------- 2. kill, resume
def test_killed_and_resumed_run_equals_uninterrupted_run(run, data_dir, tmp_path):
  workdir = str(tmp_path / 'w')
  args = main_args(workdir, data_dir)
  kill_after = 10  # a step inside epoch 2 of 2 that logs a train line (log_every_steps 10)

  def logged_kill_step():
    try:
      return any(r['event'] == 'train' and r['step'] == kill_after for r in _records(workdir))
    except (OSError, ValueError):  # not there yet, or a line half written
      return False

  code = kill_when(args, logged_kill_step, tmp_path / 'killed.log', env=USER_ENV)
  assert code == -signal.SIGKILL
  # Killed mid-epoch 2: epoch 1's checkpoint only, and a train line past it in the log.
  assert _steps(os.path.join(workdir, 'checkpoints', 'latest')) == [STEPS_PER_EPOCH]
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  assert _records(workdir)[-1]['step'] >= kill_after

  # JAX_LOG_COMPILES names the programs read from the persistent compilation cache.
  resumed = _run(args, env={**USER_ENV, 'JAX_LOG_COMPILES': '1'})
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  # The resumed state is the same program's input as a fresh one (committed to the
  # device): the training step comes from the cache the first run filled, not compiled.
  assert "Persistent compilation cache hit for 'jit_train_step'" in resumed.stderr

  ref, w = run['workdir'], workdir
  for sub in ('latest', 'best'):
    assert (_steps(os.path.join(w, 'checkpoints', sub)) ==
            _steps(os.path.join(ref, 'checkpoints', sub))), sub
  step = EPOCHS * STEPS_PER_EPOCH  # the schedule went on where it stopped
  latest_ref = _restore(os.path.join(ref, 'checkpoints', 'latest', str(step), 'state'))
  latest_new = _restore(os.path.join(w, 'checkpoints', 'latest', str(step), 'state'))
  # Checkpoints hold one flat array per dtype (limijax.workdir); the state's last int32
  # leaf is its step (the key 'step' sorts last).
  assert int(latest_new['int32'][-1]) == step
  _assert_trees_identical(latest_new, latest_ref)  # params, optimiser state, step
  best = _steps(os.path.join(ref, 'checkpoints', 'best'))[0]
  _assert_trees_identical(
      _restore(os.path.join(w, 'checkpoints', 'best', str(best), 'model')),
      _restore(os.path.join(ref, 'checkpoints', 'best', str(best), 'model')))

  with open(os.path.join(ref, 'results.json')) as f:
    results_ref = json.load(f)
  with open(os.path.join(w, 'results.json')) as f:
    results_new = json.load(f)
  assert results_new['test'] == results_ref['test']
  assert results_new['val'] == results_ref['val']
  assert results_new['best_epoch'] == results_ref['best_epoch']
  assert results_new['steps'] == step

  # The same lines (losses and learning rates included), each once; only times differ.
  records_ref, records_new = _records(ref), _records(w)
  assert ([(r['event'], r['step']) for r in records_new] ==
          [(r['event'], r['step']) for r in records_ref])
  assert _without_wall_time(records_new) == _without_wall_time(records_ref)
  assert _last_json(resumed)['test'] == results_ref['test']
  # TensorBoard shows the replayed steps once, with the same values as the reference.
  tb_new, tb_ref = _tb_scalars(w), _tb_scalars(ref)
  assert tb_new.keys() == tb_ref.keys()
  timed = tuple('/' + k for k in run_log.TIMING_KEYS)
  assert ({k: v for k, v in tb_new.items() if not k[0].endswith(timed)} ==
          {k: v for k, v in tb_ref.items() if not k[0].endswith(timed)})


def _tb_scalars(workdir):
  """Every (tag, step) -> value in the workdir's TensorBoard files; a repeat is an error."""
  import struct  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  seen = {}
  for path in sorted(pathlib.Path(workdir, 'tb').glob('events.out.tfevents*')):
    data = path.read_bytes()
    i = 0
    while i < len(data):  # TFRecord: length (8), crc (4), payload, crc (4)
      (n,) = struct.unpack('<Q', data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        key = (v.tag, event.step)
        assert key not in seen, f'{key} written twice'
        seen[key] = v.simple_value
  assert seen
  return seen


# --------------------------------------------------------------------------- 3. re-run
def test_rerunning_a_finished_run_does_not_train_again(run):
  w = run['workdir']
  ckpts = _hash_tree(os.path.join(w, 'checkpoints'))
  with open(os.path.join(w, 'results.json')) as f:
    results = json.load(f)
  records = _records(w)
  proc = _run(run['args'])
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert _hash_tree(os.path.join(w, 'checkpoints')) == ckpts  # nothing trained or saved
  with open(os.path.join(w, 'results.json')) as f:
    assert json.load(f) == results
  # Not a train line more: the same metrics.jsonl (train lines byte for byte, times too).
  assert _records(w) == records
  assert _last_json(proc) == _last_json(run['proc'])


# --------------------------------------------------------------------------- 4. bad config values
@pytest.mark.parametrize('override, key, workdir_exists', [
    ('--config.data.its.prob=2', 'data.its.prob', False),
    ('--config.loss.lambda_dice=-1', 'loss.lambda_dice', True),
    ('--config.data.num_workers=-1', 'data.num_workers', False),
    ('--config.model.stem=foo', 'model.stem', True),
])
def test_bad_config_value_is_one_line_and_writes_nothing(tmp_path, override, key,
                                                         workdir_exists):
  # Into a new workdir (not created) and an existing empty one (left empty), in turn.
  workdir = tmp_path / 'w'
  if workdir_exists:
    workdir.mkdir()
  proc = _cli('limijax.main', f'--config={CONFIG}', f'--workdir={workdir}', override)
  assert_one_line_error(proc, key)
  if workdir_exists:
    assert list(workdir.iterdir()) == []
  else:
    assert not workdir.exists()


# --------------------------------------------------------------------------- 5. config typos
@pytest.mark.parametrize('override, line', [
    ('--config.modle.x=1', 'config key modle does not exist (did you mean model?)'),
    ('--config.batch_sise=3', 'config key batch_sise does not exist (did you mean batch_size?)'),
    ('--config.data.its.prb=0.1',
     'config key data.its.prb does not exist (did you mean data.its.prob?)')])
def test_config_typo_is_one_line_exit_2(tmp_path, override, line):
  workdir = tmp_path / 'w'
  proc = _cli('limijax.main', f'--config={CONFIG}', f'--workdir={workdir}', override,
              '--config.batch_size=4')
  assert assert_one_line_error(proc) == f'error: {line}'
  assert not workdir.exists()


# --------------------------------------------------------------------------- 6. foreign workdir
def test_other_config_on_existing_workdir_is_refused_untouched(run, data_dir):
  w = run['workdir']
  before = _hash_tree(w)
  proc = _run(main_args(w, data_dir, batch_size=5))
  assert_one_line_error(proc, w, 'batch_size')
  assert _hash_tree(w) == before


def test_workdir_with_checkpoints_but_no_config_is_refused(data_dir, tmp_path):
  w = tmp_path / 'w'
  (w / 'checkpoints' / 'latest' / '8').mkdir(parents=True)
  (w / 'checkpoints' / 'latest' / '8' / 'x').write_bytes(b'precious')
  (w / 'metrics.jsonl').write_text('{"event": "train", "step": 1}\n')
  before = _hash_tree(w)
  proc = _run(main_args(str(w), data_dir))
  assert_one_line_error(proc, str(w), 'config.json')
  assert _hash_tree(w) == before
  assert sorted(p.name for p in w.iterdir()) == ['checkpoints', 'metrics.jsonl']


# --------------------------------------------------------------------------- 7. evaluate
@pytest.mark.parametrize('split', ['test', 'val'])
def test_evaluate_workdir_matches_results(run, split):
  args = [f'--workdir={run["workdir"]}'] + ([] if split == 'test' else [f'--split={split}'])
  proc = _cli('limijax.evaluate', *args)
  assert proc.returncode == 0, proc.stderr[-4000:]
  got = _last_json(proc)
  with open(os.path.join(run['workdir'], 'results.json')) as f:
    expected = json.load(f)[split]
  for key in METRICS_KEYS:
    assert got[key] == expected[key], key


# --------------------------------------------------------------------------- 8. predict
def test_predict_writes_masks_and_overlays(run, tmp_path):
  rng = np.random.default_rng(0)
  inputs = tmp_path / 'in'
  inputs.mkdir()
  odd = rng.integers(0, 60, (37, 50)).astype(np.uint8)  # H 37 x W 50: not multiples of 16
  odd[10:13, 20:23] = 255  # a bright little target
  Image.fromarray(odd).save(inputs / 'odd.png')
  rgb = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
  Image.fromarray(rgb).save(inputs / 'colour.bmp')
  (inputs / 'notes.txt').write_text('not an image')
  out = tmp_path / 'out'
  proc = _cli('limijax.predict', f'--workdir={run["workdir"]}', f'--input={inputs}',
              f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert sorted(p.name for p in out.iterdir()) == [
      'colour.png', 'colour_overlay.png', 'odd.png', 'odd_overlay.png']
  for stem, (h, w) in (('odd', (37, 50)), ('colour', (32, 32))):
    with Image.open(out / f'{stem}.png') as im:
      mask = np.asarray(im)
    assert mask.shape == (h, w), stem
    assert set(np.unique(mask)) <= {0, 255}, stem
    with Image.open(out / f'{stem}_overlay.png') as im:
      assert im.mode == 'RGB' and im.size == (w, h), stem
      over = np.asarray(im)
    # Away from the detections the overlay is the input image in grey.
    grey = odd if stem == 'odd' else np.asarray(Image.fromarray(rgb).convert('L'))
    far = ~ndimage.binary_dilation(mask > 0, structure=np.ones((3, 3)))
    for c in range(3):
      assert np.array_equal(over[..., c][far], grey[far]), stem

  # The mask is the model's own decision, logit > 0, on the normalised image at its size.
  import jax  # pylint: disable=g-import-not-at-top
  trained = workdir_lib.load_run(run['workdir'])
  x = (odd.astype(np.float32) - trained.mean) / trained.std
  padded = np.zeros((1, 48, 64, 1), np.float32)  # 37 x 50 padded to multiples of 16
  padded[0, :37, :50, 0] = x
  logits = jax.jit(lambda v, x: trained.model.apply(v, x, train=False))(
      {'params': trained.params, **trained.model_state}, padded)
  with Image.open(out / 'odd.png') as im:
    np.testing.assert_array_equal(np.asarray(im) == 255, np.asarray(logits)[0, :37, :50, 0] > 0)

  # A single file works too and gives the same mask.
  single = tmp_path / 'single'
  proc = _cli('limijax.predict', f'--workdir={run["workdir"]}', f'--input={inputs / "odd.png"}',
              f'--out={single}')
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert (single / 'odd.png').read_bytes() == (out / 'odd.png').read_bytes()


def test_predict_groups_the_sizes_and_gives_each_image_its_own_size_mask(run, tmp_path,
                                                                        monkeypatch):
  # One shape for every size (evaluation.EVAL_SHAPES = 1): 37 x 50 runs at its padded 48 x 64,
  # 20 x 30 inside 48 x 64 with its own size (32 x 32) given to the model: one program.
  import jax  # pylint: disable=g-import-not-at-top
  from limijax import predict  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(evaluation, 'EVAL_SHAPES', 1)
  rng = np.random.default_rng(4)
  images = {'big': rng.integers(0, 60, (37, 50)).astype(np.uint8),
            'small': rng.integers(0, 60, (20, 30)).astype(np.uint8)}
  images['small'][5:8, 9:12] = 255
  for stem, image in images.items():
    Image.fromarray(image).save(tmp_path / f'{stem}.png')
  files = [str(tmp_path / f'{stem}.png') for stem in images]
  predict_fn = evaluation.make_predict(workdir_lib.load_run(run['workdir']).model)
  before = predict_fn._cache_size()
  predict.predict_files(run['workdir'], files, str(tmp_path / 'out'), progress=False)
  assert predict_fn._cache_size() - before <= 1  # one shape, at most one new program
  trained = workdir_lib.load_run(run['workdir'])
  own = jax.jit(lambda v, x: trained.model.apply(v, x, train=False))
  for stem, image in images.items():
    h, w = image.shape
    x = np.zeros((1, h + -h % 16, w + -w % 16, 1), np.float32)
    x[0, :h, :w, 0] = (image.astype(np.float32) - trained.mean) / trained.std
    logits = np.asarray(own({'params': trained.params, **trained.model_state}, x))[0, :h, :w, 0]
    with Image.open(tmp_path / 'out' / f'{stem}.png') as im:
      mask = np.asarray(im) == 255
    sure = np.abs(logits) > 1e-4  # float rounding may flip a logit this close to 0
    np.testing.assert_array_equal(mask[sure], logits[sure] > 0)
    assert sure.mean() > 0.99


def test_predict_missing_input_is_one_line(run, tmp_path):
  missing = tmp_path / 'nothing_here.png'
  proc = _cli('limijax.predict', f'--workdir={run["workdir"]}', f'--input={missing}',
              f'--out={tmp_path / "out"}')
  assert_one_line_error(proc, str(missing))
  assert not (tmp_path / 'out').exists()


# --------------------------------------------------------------------------- 9. defaults
def test_bare_command_finds_the_dataset_where_basicirstd_keeps_it(tmp_path):
  from limijax import synthetic  # pylint: disable=g-import-not-at-top
  home = tmp_path / 'project'
  root = home / 'datasets' / 'NUDT-SIRST'
  for sub in ('images', 'masks', 'img_idx'):
    (root / sub).mkdir(parents=True)
  ids = []
  for id_, image, mask in synthetic.generate(30, 32, seed=3):
    Image.fromarray(image).save(root / 'images' / f'{id_}.png')
    Image.fromarray((mask * 255).astype(np.uint8)).save(root / 'masks' / f'{id_}.png')
    ids.append(id_)
  (root / 'img_idx' / 'train_NUDT-SIRST.txt').write_text('\n'.join(ids[:20]) + '\n')
  (root / 'img_idx' / 'test_NUDT-SIRST.txt').write_text('\n'.join(ids[20:]) + '\n')
  (home / 'configs').symlink_to(REPO / 'configs')
  small = ['--config.data.image_size=32', '--config.batch_size=4',
           '--config.model.depthwise=grouped',  # compiles faster (tests/tiny_run.py)
           f'--config.data.data_dir={tmp_path / "prepared"}', '--progress=false']
  # The tests' faster-compiling XLA settings: this run is about finding the data.
  proc = _run([sys.executable, '-m', 'limijax.main', '--config=configs/nudt.py',
               '--config.num_epochs=1', *small], cwd=home, env=dict(os.environ))
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert proc.stdout.splitlines()[0] == 'workdir: workdirs/nudt'  # printed first
  with open(home / 'workdirs' / 'nudt' / 'results.json') as f:
    results = json.load(f)
  assert results['dataset']['layout'] == 'basicirstd'
  assert results['num_images']['test'] == 6  # the paper's random 8:2 split of 30 images

  # No dataset there: one line saying where it looked and what to put there.
  empty = tmp_path / 'elsewhere'
  empty.mkdir()
  (empty / 'configs').symlink_to(REPO / 'configs')
  proc = _run([sys.executable, '-m', 'limijax.main', '--config=configs/irstd1k.py', *small],
              cwd=empty, env=dict(os.environ))
  line = assert_one_line_error(proc, 'datasets/IRSTD-1k', '--config.data.root')
  assert not (empty / 'workdirs').exists(), line
