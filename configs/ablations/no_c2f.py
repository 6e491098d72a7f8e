"""Paper Table 2, row "Ours-w/o C2F": a plain FPN head, no label-smoothed side supervision.
IRSTD-1k based, all else as configs/irstd1k.py.

    python -m limijax.main --config=configs/ablations/no_c2f.py   # datasets/IRSTD-1k -> workdirs/no_c2f
"""

import os

from limijax.defaults import config_from_file


def get_config():
  c = config_from_file(os.path.join(os.path.dirname(__file__), os.pardir, 'irstd1k.py'))
  c.model.head = 'fpn'
  return c
