"""Beside paper Table 2's "w/o C2F": the side heads kept, trained with hard labels (every
side alpha 0, so every side weight 1): deep supervision without C2F's label smoothing,
another reading of the paper's "plain FPN". IRSTD-1k based, all else as configs/irstd1k.py.

    python -m limijax.main --config=configs/ablations/no_c2f_hard.py   # datasets/IRSTD-1k -> workdirs/no_c2f_hard
"""

import os

from limijax.defaults import config_from_file


def get_config():
  c = config_from_file(os.path.join(os.path.dirname(__file__), os.pardir, 'irstd1k.py'))
  c.loss.side_alphas = (0.0, 0.0, 0.0, 0.0)
  return c
