"""limijax: Limi-Net (Light but Mighty, ICIC 2025) for infrared small target detection in JAX/Flax."""

import importlib.metadata as _metadata
import os as _os

__version__ = "0.1.0"

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
