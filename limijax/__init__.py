"""limijax: Limi-Net (Light but Mighty, ICIC 2025) for infrared small target detection in JAX/Flax."""

import importlib.metadata as _metadata

try:
  __version__ = _metadata.version('limijax')  # pyproject.toml's, once installed
except _metadata.PackageNotFoundError:  # the source tree, not installed
  __version__ = '0+unknown'
