"""limijax: Limi-Net (Light but Mighty, ICIC 2025) for infrared small target detection in JAX/Flax."""

import importlib.metadata as _metadata
import os as _os
import sys as _sys

try:
  __version__ = _metadata.version('limijax')  # pyproject.toml's, once installed
except _metadata.PackageNotFoundError:  # the source tree, not installed
  __version__ = '0+unknown'

# XLA flag set by default (before JAX starts its backend; a flag already in XLA_FLAGS wins):
# XLA:CPU of jaxlib 0.10 hands reductions and element-wise fusions to YNNPACK, which
# runs Limi-Net's GroupNorm statistics (a few groups reduced over a whole image) more
# slowly than XLA's own loops: inference takes about 1.5x as long with it on a 2-core CPU
# (README, Speed). Only for the jaxlib minor version it was measured on: XLA aborts on a
# flag it does not know. LIMIJAX_XLA_DEFAULTS=0 turns it off.
_YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type='


def _set_default_xla_flags() -> None:
  if _os.environ.get('LIMIJAX_XLA_DEFAULTS', '1') == '0':
    return
  try:
    major, minor = (int(p) for p in _metadata.version('jaxlib').split('.')[:2])
  except (_metadata.PackageNotFoundError, ValueError):
    return
  flags = _os.environ.get('XLA_FLAGS', '')
  if (major, minor) == (0, 10) and 'xla_cpu_experimental_ynn_fusion_type' not in flags:
    _os.environ['XLA_FLAGS'] = f'{flags} {_YNN_FLAG}'.strip()


_set_default_xla_flags()


# Huge pages for XLA's buffers (Linux with glibc 2.35 or newer). XLA:CPU allocates every
# execution's buffers with malloc; at these sizes glibc maps fresh memory for each and
# unmaps it when freed, so every call faults its buffers in again, 4 KiB at a time: a
# training step at batch 10, 256x256 took 189,000 page faults (740 MB) and a third of a
# CPU-second in the kernel on a 2-core CPU. glibc's tunable glibc.malloc.hugetlb=1 makes
# malloc ask for transparent huge pages (2 MiB): about 850 faults, and the step took 812
# against 1034 ms (README, Speed). glibc reads its tunables only when a process starts, so
# a limijax command (python -m limijax.<command>) started without the tunable executes
# itself again at once, with it added to GLIBC_TUNABLES. Importing limijax from other
# programs changes nothing. LIMIJAX_HUGE_PAGES=0 turns this off.
HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def _command_module(argv) -> str | None:
  """``limijax.<command>`` when ``argv`` (``sys.orig_argv``) runs ``python [options] -m
  limijax.<command> ...``, else None."""
  i = 1
  while i < len(argv):
    arg = argv[i]
    if arg == '-m':
      module = argv[i + 1] if i + 1 < len(argv) else ''
      return module if module.startswith('limijax.') else None
    if arg in ('-X', '-W'):  # options that take the next argument
      i += 2
      continue
    if not arg.startswith('-') or arg.startswith('-c'):
      return None  # a script, or -c: not a limijax command
    i += 1
  return None


def huge_pages_environment(environ, argv) -> dict | None:
  """The environment to execute ``argv`` again with (``GLIBC_TUNABLES`` with
  :data:`HUGE_PAGES_TUNABLE` added), or None when nothing is to be done: not a limijax
  command, not Linux with glibc >= 2.35, transparent huge pages off, the tunable already
  set, or ``LIMIJAX_HUGE_PAGES=0``."""
  if environ.get('LIMIJAX_HUGE_PAGES', '1') == '0' or _command_module(argv) is None:
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables or not _sys.platform.startswith('linux'):
    return None
  try:
    name, version = _os.confstr('CS_GNU_LIBC_VERSION').split()
    if name != 'glibc' or tuple(int(v) for v in version.split('.')[:2]) < (2, 35):
      return None
    with open(_THP_SETTING) as f:
      if '[never]' in f.read():
        return None
  except (AttributeError, OSError, ValueError):
    return None
  env = dict(environ)
  env['GLIBC_TUNABLES'] = (f'{tunables}:{HUGE_PAGES_TUNABLE}' if tunables
                           else HUGE_PAGES_TUNABLE)
  return env


def _execute_again_with_huge_pages() -> None:
  argv = getattr(_sys, 'orig_argv', None)
  env = huge_pages_environment(_os.environ, argv or [])
  if env is not None:
    _sys.stdout.flush()
    _sys.stderr.flush()
    _os.execve(_sys.executable, argv, env)


_execute_again_with_huge_pages()
