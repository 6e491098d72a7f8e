"""Paper Table 2, row "Ours-w/o SES": the stem is a depthwise-separable conv + BatchNorm.
IRSTD-1k based, all else as configs/irstd1k.py.

    python -m limijax.main --config=configs/ablations/no_ses.py   # datasets/IRSTD-1k -> workdirs/no_ses
"""

import os

from limijax.defaults import config_from_file


def get_config():
  c = config_from_file(os.path.join(os.path.dirname(__file__), os.pardir, 'irstd1k.py'))
  c.model.stem = 'dsconv_bn'
  return c
