"""Process set-up for the commands that run XLA; importing limijax changes nothing.

The commands that run the model (``main``, ``evaluate``, ``predict``, ``export``,
``import_torch``, ``summary``, ``bench``) call :func:`set_up_command` first thing, before
JAX is imported, when they run as programs. It does two things, each measured (see
BENCHMARKS.md) and each off with an environment variable:

* **An XLA flag** (``LIMIJAX_XLA_DEFAULTS=0`` turns it off): XLA:CPU of jaxlib 0.10 hands
  reductions and element-wise fusions to YNNPACK, which runs Limi-Net's GroupNorm
  statistics (a few groups reduced over a whole image) more slowly than XLA's own loops.
  ``--xla_cpu_experimental_ynn_fusion_type=`` (empty: none) is added to ``XLA_FLAGS``,
  only for the jaxlib minor version it was measured on (XLA aborts on a flag it does not
  know) and never over a value the user set.
* **Huge pages for XLA's buffers** (``LIMIJAX_HUGE_PAGES=0`` turns it off; Linux with
  glibc 2.35 or newer, transparent huge pages not ``never``): XLA:CPU allocates every
  execution's buffers with malloc; at these sizes glibc maps fresh memory for each and
  unmaps it when freed, so every call faults its buffers in again 4 KiB at a time.
  glibc's tunable ``glibc.malloc.hugetlb=1`` makes malloc ask for 2 MiB pages instead.
  glibc reads its tunables only when a process starts, and no run-time call sets this
  one, so the command executes itself again at once with it added to
  ``GLIBC_TUNABLES``.

:func:`described` says what is in force; training logs it once its workdir is claimed,
and each command's ``--help`` names this module.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from typing import Mapping, Sequence

YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type='
YNN_JAXLIB = (0, 10)  # the jaxlib minor version the flag was measured on
HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def xla_flags(environ: Mapping[str, str]) -> str | None:
  """``XLA_FLAGS`` with the YNN flag added, or None when nothing is to be added (turned
  off, another jaxlib, or the user already chose a value)."""
  if environ.get('LIMIJAX_XLA_DEFAULTS', '1') == '0':
    return None
  try:
    version = tuple(int(p) for p in importlib.metadata.version('jaxlib').split('.')[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return None
  flags = environ.get('XLA_FLAGS', '')
  if version != YNN_JAXLIB or 'xla_cpu_experimental_ynn_fusion_type' in flags:
    return None
  return f'{flags} {YNN_FLAG}'.strip()


def _command_module(argv: Sequence[str]) -> str | None:
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


def huge_pages_environment(environ: Mapping[str, str], argv: Sequence[str]) -> dict | None:
  """The environment to execute ``argv`` again with (``GLIBC_TUNABLES`` with
  :data:`HUGE_PAGES_TUNABLE` added), or None when nothing is to be done: not a limijax
  command, not Linux with glibc >= 2.35, transparent huge pages off, the tunable already
  set, or ``LIMIJAX_HUGE_PAGES=0``."""
  if environ.get('LIMIJAX_HUGE_PAGES', '1') == '0' or _command_module(argv) is None:
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables or not sys.platform.startswith('linux'):
    return None
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
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


def set_up_command() -> None:
  """The process set-up of the module docstring: executes the command again with huge
  pages where glibc offers them, then adds the XLA flag. Call it before JAX is imported,
  from a command's ``if __name__ == '__main__':``."""
  env = huge_pages_environment(os.environ, getattr(sys, 'orig_argv', None) or [])
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
  flags = xla_flags(os.environ)
  if flags is not None:
    os.environ['XLA_FLAGS'] = flags


def described(environ: Mapping[str, str] = os.environ) -> str:
  """One line saying which of the two settings are in force in this process."""
  parts = []
  if YNN_FLAG in environ.get('XLA_FLAGS', '').split():
    parts.append(f'XLA_FLAGS has {YNN_FLAG} (LIMIJAX_XLA_DEFAULTS=0: without)')
  if HUGE_PAGES_TUNABLE in environ.get('GLIBC_TUNABLES', ''):
    parts.append(f'GLIBC_TUNABLES has {HUGE_PAGES_TUNABLE} (LIMIJAX_HUGE_PAGES=0: without)')
  return 'process set-up: ' + ('; '.join(parts) or 'none')
