"""Paper Table 2, row "Ours-w/o HUF": bilinear upsampling + depthwise-separable conv, no DSTC stream.
IRSTD-1k based, all else as configs/irstd1k.py.

    python -m limijax.main --config=configs/ablations/no_huf.py   # datasets/IRSTD-1k -> workdirs/no_huf
"""

import os

from limijax.defaults import config_from_file


def get_config():
  c = config_from_file(os.path.join(os.path.dirname(__file__), os.pardir, 'irstd1k.py'))
  c.model.upsampler = 'bilinear'
  return c
