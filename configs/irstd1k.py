"""IRSTD-1k with the paper's settings: the standard 8:2 split (800 / 201), 20 % of train
held out for validation, 512x512 crops, batch 10, 300 epochs, AdamW 5e-3, warm-up + cosine.

    python -m limijax.main --config=configs/irstd1k.py

reads ``datasets/IRSTD-1k`` (the BasicIRSTD toolbox's place for it; another folder:
``--config.data.root=DIR``) and writes ``workdirs/irstd1k``.
"""

from limijax.defaults import base_config


def get_config():
  c = base_config()
  c.data.name = 'irstd1k'
  c.data.root = 'datasets/IRSTD-1k'
  c.data.split = 'standard'
  c.data.image_size = 512
  return c
