"""NUAA-SIRST (images of various sizes): the standard split files, 20 % of train held out
for validation, 256x256 crops (smaller images zero-padded), the paper's optimiser settings.

    python -m limijax.main --config=configs/nuaa.py

reads ``datasets/NUAA-SIRST`` (the BasicIRSTD toolbox's place for it; another folder:
``--config.data.root=DIR``) and writes ``workdirs/nuaa``.
"""

from limijax.defaults import base_config


def get_config():
  c = base_config()
  c.data.name = 'nuaa'
  c.data.root = 'datasets/NUAA-SIRST'
  c.data.split = 'standard'
  c.data.image_size = 256
  return c
