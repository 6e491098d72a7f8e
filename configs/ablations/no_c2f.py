"""Paper Table 2, row "Ours-w/o C2F": a plain FPN head, no label-smoothed side supervision.
IRSTD-1k based, all else as configs/irstd1k.py.

    python -m limijax.main --config=configs/ablations/no_c2f.py \
        --config.data.root=/path/to/IRSTD-1k --workdir=workdirs/no_c2f
"""

from limijax.defaults import base_config


def get_config():
  c = base_config()
  c.data.name = 'irstd1k'
  c.data.split = 'standard'
  c.data.image_size = 512
  c.model.head = 'fpn'
  return c
