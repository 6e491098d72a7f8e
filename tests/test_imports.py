"""Every limijax module imports into one process, defines no command flags when imported,
and the data modules import each other without a cycle; a limijax command (and only a
command) asks glibc for huge pages (the bench's CLI test sees it happen)."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

import limijax

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
  monkeypatch.setattr(limijax, '_THP_SETTING', str(setting))
  monkeypatch.setattr(limijax._sys, 'platform', 'linux')
  monkeypatch.setattr(limijax._os, 'confstr', lambda name: version)


def test_huge_pages_for_limijax_commands_only_added_once_and_kept_beside_other_tunables(
    monkeypatch, tmp_path):
  _fake_glibc(monkeypatch, tmp_path)
  env = limijax.huge_pages_environment
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
  monkeypatch.setattr(limijax._sys, 'platform', platform)
  assert limijax.huge_pages_environment({}, ['python3', '-m', 'limijax.main']) is None


def test_version_is_the_installed_packages():
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import limijax  # pylint: disable=g-import-not-at-top
  assert limijax.__version__ == importlib.metadata.version('limijax')
