"""Every limijax module imports into one process, defines no command flags and changes no
environment variable when imported, and the data modules import each other without a
cycle; a limijax command that runs XLA (and only such a command) asks glibc for huge pages
(the bench's CLI test sees it happen) and adds its XLA flag."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

import limijax
from limijax import process

PACKAGE = pathlib.Path(limijax.__file__).parent
# Flags only commands may define, and only when they run.
COMMAND_FLAGS = ('root', 'workdir', 'config', 'input', 'out', 'json')

_IMPORT_ALL = r'''
import json, pkgutil, traceback
from absl import flags
import pytest

import limijax
before = set(flags.FLAGS)
failed, names = {}, []
for info in pkgutil.walk_packages(limijax.__path__, 'limijax.'):
  names.append(info.name)
  try:
    __import__(info.name)
  except BaseException as e:  # SystemExit too: nothing may exit on import
    failed[info.name] = ''.join(traceback.format_exception_only(type(e), e)).strip()
new = sorted(set(flags.FLAGS) - before)
print(json.dumps({'names': names, 'failed': failed, 'new_flags': new}))
'''


def test_every_module_imports_in_one_process_and_defines_no_command_flag():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', _IMPORT_ALL], capture_output=True, text=True,
                        timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert 'limijax.data.__main__' in result['names']  # the walk found the packages too
  assert 'limijax.tfds_builders' in result['names']
  assert result['failed'] == {}
  defined = [f for f in COMMAND_FLAGS if f in result['new_flags']]
  assert defined == [], f'flags defined at import time: {defined}'


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob('*.py'):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
      parts.pop()
    out['.'.join(parts)] = path
  return out


def _imports(path: pathlib.Path, modules) -> set[str]:
  """The limijax modules ``path`` imports anywhere (function-level imports included),
  with the packages each import runs first (``a.b.c`` runs ``a.b``)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      targets = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in modules
                 else node.module for a in node.names]
    else:
      continue
    for target in targets:
      parts = target.split('.')
      for k in range(2, len(parts) + 1):  # the package itself ('limijax') is harmless
        if '.'.join(parts[:k]) in modules:
          found.add('.'.join(parts[:k]))
  return found


def _reachable(graph, start):
  seen, todo = set(), [start]
  while todo:
    for nxt in graph.get(todo.pop(), ()):
      if nxt not in seen:
        seen.add(nxt)
        todo.append(nxt)
  return seen


def test_no_import_cycle_through_the_data_modules():
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    deps = _imports(path, modules)
    # A module's own package (or itself) is always initialised first: not a cycle.
    graph[name] = {d for d in deps if d != name and not name.startswith(d + '.')}
  data_modules = [m for m in modules if m == 'limijax.data' or m.startswith('limijax.data.')]
  for name in data_modules + ['limijax.tfds_builders', 'limijax.image_io']:
    assert name not in _reachable(graph, name), f'{name} imports itself back'
  reached = _reachable(graph, 'limijax.tfds_builders')
  assert not reached & set(data_modules), f'tfds_builders imports {sorted(reached)}'


def test_tfds_builders_imports_alone():
  code = ('import sys, limijax.tfds_builders; '
          'assert not any(m.startswith("limijax.data") for m in sys.modules), sorted(sys.modules)')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]


def _fake_glibc(monkeypatch, tmp_path, version='glibc 2.36', thp='always [madvise] never'):
  setting = tmp_path / 'enabled'
  setting.write_text(thp + '\n')
  monkeypatch.setattr(process, '_THP_SETTING', str(setting))
  monkeypatch.setattr(process.sys, 'platform', 'linux')
  monkeypatch.setattr(process.os, 'confstr', lambda name: version)


def test_huge_pages_for_limijax_commands_only_added_once_and_kept_beside_other_tunables(
    monkeypatch, tmp_path):
  _fake_glibc(monkeypatch, tmp_path)
  env = process.huge_pages_environment
  command = ['python3', '-m', 'limijax.main', '--config=configs/synthetic.py']
  assert env({'PATH': '/bin'}, command) == {'PATH': '/bin',
                                            'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  assert env({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, command) == {
      'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'}
  assert env({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, command) is None  # no loop
  assert env({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, command) is None  # the user's
  assert env({'LIMIJAX_HUGE_PAGES': '0'}, command) is None
  with_options = ['python3', '-X', 'importtime', '-u', '-m', 'limijax.bench', '--json']
  assert env({}, with_options) is not None
  for not_ours in (['python3', '-c', 'import limijax'], ['python3', 'train.py', '-m', 'x'],
                   ['python3', '-m', 'pytest'], ['python3'], ['python3', '-m']):
    assert env({}, not_ours) is None, not_ours


@pytest.mark.parametrize('version,thp,platform', [
    ('glibc 2.34', 'always [madvise] never', 'linux'),  # no hugetlb tunable before 2.35
    ('glibc 2.36', 'always madvise [never]', 'linux'),  # huge pages turned off
    ('glibc 2.36', 'always [madvise] never', 'darwin')])
def test_huge_pages_left_alone_where_glibc_or_the_kernel_cannot(monkeypatch, tmp_path,
                                                                version, thp, platform):
  _fake_glibc(monkeypatch, tmp_path, version, thp)
  monkeypatch.setattr(process.sys, 'platform', platform)
  assert process.huge_pages_environment({}, ['python3', '-m', 'limijax.main']) is None


def test_version_is_the_installed_packages():
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import limijax  # pylint: disable=g-import-not-at-top
  assert limijax.__version__ == importlib.metadata.version('limijax')


def test_importing_limijax_leaves_the_environment_alone():
  # JAX sets two variables of its own when imported (TF_CPP_MIN_LOG_LEVEL and a TPU one):
  # imported first, so that what is compared is limijax's doing.
  code = ('import json, os, pkgutil, jax, limijax\n'
          'before = dict(os.environ)\n'
          'for info in pkgutil.walk_packages(limijax.__path__, "limijax."):\n'
          '  __import__(info.name)\n'
          'print(json.dumps([before == dict(os.environ), os.environ.get("XLA_FLAGS"), '
          'os.environ.get("GLIBC_TUNABLES")]))')
  base = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'GLIBC_TUNABLES')}
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        timeout=300, env={**base, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Every module imported, nothing changed: no XLA flag, no tunable, no new process.
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == [True, None, None]


def test_the_xla_flag_is_added_only_where_known_and_never_over_the_users():
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  known = importlib.metadata.version('jaxlib').split('.')[:2] == ['0', '10']
  assert process.xla_flags({'XLA_FLAGS': '--xla_foo=1'}) == (
      '--xla_foo=1 --xla_cpu_experimental_ynn_fusion_type=' if known else None)
  user = '--xla_cpu_experimental_ynn_fusion_type=dot'
  assert process.xla_flags({'XLA_FLAGS': user}) is None
  assert process.xla_flags({'LIMIJAX_XLA_DEFAULTS': '0'}) is None
  on = {'XLA_FLAGS': process.YNN_FLAG, 'GLIBC_TUNABLES': process.HUGE_PAGES_TUNABLE}
  line = process.described(on)
  assert 'LIMIJAX_XLA_DEFAULTS=0' in line and 'LIMIJAX_HUGE_PAGES=0' in line
  assert process.described({}) == 'process set-up: none'


def test_a_command_sets_the_flag_and_its_help_says_so():
  base = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'LIMIJAX_XLA_DEFAULTS')}
  code = ('import os, sys; sys.argv = ["x"]; from limijax import process; '
          'process.set_up_command(); print(repr(os.environ.get("XLA_FLAGS")))')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        timeout=120, env=base, check=True)
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  known = importlib.metadata.version('jaxlib').split('.')[:2] == ['0', '10']
  assert proc.stdout.strip() == (repr(process.YNN_FLAG) if known else 'None')
  # Each such command's --help names the set-up.
  for command in ('main', 'evaluate', 'predict', 'export', 'import_torch', 'summary', 'bench'):
    module = importlib.import_module(f'limijax.{command}')
    assert 'limijax.process' in module.__doc__, command


def test_inference_commands_never_import_the_training_module():
  # With limijax.train blocked, the inference-side commands and the code they call
  # (evaluation, workdir loading, export and its check) import and build their pieces.
  code = ('import sys; sys.modules["limijax.train"] = None\n'
          'from limijax import evaluate, export, import_torch, predict, evaluation, workdir\n'
          'from limijax import model\n'
          'm = model.LimiNet(depthwise="grouped")\n'
          'evaluation.make_predict(m)\n'
          'print("ok", "limijax.train" in sys.modules and sys.modules["limijax.train"] is None)')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ['ok', 'True']
  # And in the source: no function of theirs imports it either.
  for name in ('evaluate', 'export', 'import_torch', 'predict', 'evaluation', 'workdir'):
    tree = ast.parse((PACKAGE / f'{name}.py').read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and n.module == 'limijax' for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert 'train' not in imported and 'limijax.train' not in imported, name


def test_the_shape_of_the_code_stays_readable():
  # No module over 500 lines; the training loop under 150; the model's blocks take every
  # implementation choice as an attribute or argument, never from a context variable.
  lengths = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines())
             for p in PACKAGE.rglob('*.py')}
  assert max(lengths.values()) <= 500, sorted(lengths.items(), key=lambda kv: -kv[1])[:3]
  tree = ast.parse((PACKAGE / 'train.py').read_text())
  loop = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
              and n.name == 'train_and_evaluate')
  assert loop.end_lineno - loop.lineno + 1 <= 150
  for p in [PACKAGE / 'model.py', *(PACKAGE / 'kernels').glob('*.py')]:
    assert 'contextvars' not in p.read_text() and 'ContextVar' not in p.read_text(), p.name
