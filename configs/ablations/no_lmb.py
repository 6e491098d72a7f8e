"""Paper Table 2, row "Ours-w/o LMB": plain residual blocks instead of LMB.
IRSTD-1k based, all else as configs/irstd1k.py.

    python -m limijax.main --config=configs/ablations/no_lmb.py \
        --config.data.root=/path/to/IRSTD-1k --workdir=workdirs/no_lmb
"""

from limijax.defaults import base_config


def get_config():
  c = base_config()
  c.data.name = 'irstd1k'
  c.data.split = 'standard'
  c.data.image_size = 512
  c.model.block = 'residual'
  return c
