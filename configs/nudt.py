"""NUDT-SIRST with the paper's settings (4.1-4.2): random 8:2 split, 20 % of train held
out for validation, 256x256, batch 10, 300 epochs, AdamW 5e-3, warm-up + cosine.

    python -m limijax.main --config=configs/nudt.py

reads ``datasets/NUDT-SIRST`` (the BasicIRSTD toolbox's place for it; another folder:
``--config.data.root=DIR``) and writes ``workdirs/nudt``.

``--config.data.split=standard`` uses the dataset's own split files instead.
"""

from limijax.defaults import base_config


def get_config():
  c = base_config()
  c.data.name = 'nudt'
  c.data.root = 'datasets/NUDT-SIRST'
  c.data.split = 'random'  # the paper divides NUDT-SIRST randomly, 8:2
  c.data.image_size = 256
  return c
