"""Shared test setup: CPU, absl flags marked parsed (Grain workers need it)."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

# One persistent compilation cache per test run, shared by the xdist workers and the
# subprocesses the CLI tests start: a program compiled once is read back everywhere else.
# The process that starts the run makes it (the workers inherit its environment) and
# removes it at the end; a cache folder the user set is used and kept.
import tempfile  # noqa: E402

_OWN_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix='limijax-jax-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_CACHE
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
# Tests run tiny inputs, so XLA's compile time dwarfs run time: a lower backend
# optimisation level halves compile time and changes no result the tests compare
# (every comparison is between functions compiled with the same flags).
# XLA's older CPU fusion path compiles these small programs about twice as fast.
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0 '
                      '--xla_cpu_use_fusion_emitters=false')
# The XLA flag the commands add (limijax.process), so that what the tests compute in this
# process is computed as the commands compute it.
from limijax import process as _process  # noqa: E402

os.environ['XLA_FLAGS'] = _process.xla_flags(os.environ) or os.environ['XLA_FLAGS']


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# --------------------------------------------------------------------------- shared runs
# pytest-xdist workers are separate processes: what several test files need (the prepared
# synthetic data, the tiny trained runs of tests/tiny_run.py) is built once per test run
# by the first worker that asks, under a file lock, in a folder every worker sees.
import json  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def shared_dir(tmp_path_factory):
  base = tmp_path_factory.getbasetemp()
  # Under xdist each worker's basetemp is <run folder>/popen-gw<N>.
  root = base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base
  path = root / 'limijax-shared'
  path.mkdir(exist_ok=True)
  return path


def built_once(shared_dir, name, build):
  """``build(folder)``'s JSON result, computed by the first process that asks; a folder
  left half built by a process that failed is built anew."""
  from limijax.tfds_builders import file_lock  # pylint: disable=g-import-not-at-top

  folder, done = shared_dir / name, shared_dir / f'{name}.json'
  with file_lock(str(shared_dir / f'{name}.lock')):
    if not done.exists():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      result = build(folder)
      done.with_suffix('.tmp').write_text(json.dumps(result))
      done.with_suffix('.tmp').replace(done)
  return json.loads(done.read_text())


@pytest.fixture(scope='session')
def data_dir(shared_dir):
  """The tiny run's synthetic images, generated and prepared once per test run."""
  from limijax.data import load  # pylint: disable=g-import-not-at-top
  from tiny_run import synthetic_config  # pylint: disable=g-import-not-at-top

  def build(folder):
    dataset = load.load_dataset(synthetic_config(str(folder)).data)
    return {'path': str(folder), 'test': len(dataset.test)}

  return built_once(shared_dir, 'data', build)['path']


def _train(data_dir, **overrides):
  from limijax import train  # pylint: disable=g-import-not-at-top
  from tiny_run import synthetic_config  # pylint: disable=g-import-not-at-top

  def build(folder):
    workdir = str(folder / 'w')
    return {'workdir': workdir, 'results': train.train_and_evaluate(
        synthetic_config(data_dir, **overrides), workdir, progress=False)}

  return build


@pytest.fixture(scope='session')
def tiny_run(shared_dir, data_dir):
  """(workdir, results) of the tiny run, trained in process once per test run. Read only:
  a test that changes a run trains its own."""
  r = built_once(shared_dir, 'tiny-run', _train(data_dir))
  return r['workdir'], r['results']['runs'][0]


@pytest.fixture(scope='session')
def tiny_two_seeds(shared_dir, data_dir):
  """(workdir, results) of the tiny run with seeds 0 and 1 in one process (TWO_SEEDS)."""
  from tiny_run import TWO_SEEDS  # pylint: disable=g-import-not-at-top
  r = built_once(shared_dir, 'tiny-two-seeds', _train(data_dir, **TWO_SEEDS))
  return r['workdir'], r['results']


# --------------------------------------------------------------------------- order
# The files that take longest go to the two workers first (pyproject.toml turns off
# xdist's reordering by test count), so that neither worker is left with a long file at
# the end; the shared runs are built by tests/test_resume_and_seeds.py before
# tests/test_export.py and tests/test_devices.py read them. test_multihost.py (two
# training processes, about 45 s) comes last of these, so that the short files fill the
# end of both workers: left among them, it ended one worker 40 s after the other.
_LONGEST_FIRST = ('test_cli_runs.py', 'test_resume_and_seeds.py', 'test_train.py',
                  'test_export.py', 'test_devices.py', 'test_model.py', 'test_depthwise.py',
                  'test_torch_twin.py', 'test_bench.py', 'test_multihost.py')


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.name
    return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

  items.sort(key=rank)  # stable: the other files, and the tests in a file, keep their order
