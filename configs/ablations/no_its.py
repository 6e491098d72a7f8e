"""Paper Table 2, row "Ours-w/o ITS": no pseudo targets from the Infrared Target Simulator.
IRSTD-1k based, all else as configs/irstd1k.py.

    python -m limijax.main --config=configs/ablations/no_its.py   # datasets/IRSTD-1k -> workdirs/no_its
"""

import os

from limijax.defaults import config_from_file


def get_config():
  c = config_from_file(os.path.join(os.path.dirname(__file__), os.pardir, 'irstd1k.py'))
  c.data.its.enabled = False
  return c
