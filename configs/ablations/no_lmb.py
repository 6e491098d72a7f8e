"""Paper Table 2, row "Ours-w/o LMB": plain residual blocks instead of LMB.
IRSTD-1k based, all else as configs/irstd1k.py.

    python -m limijax.main --config=configs/ablations/no_lmb.py   # datasets/IRSTD-1k -> workdirs/no_lmb
"""

import os

from limijax.defaults import config_from_file


def get_config():
  c = config_from_file(os.path.join(os.path.dirname(__file__), os.pardir, 'irstd1k.py'))
  c.model.block = 'residual'
  return c
