"""The embedded default: Limi-Net on a synthetic infrared small-target dataset.

No download: the images (realistic clutter, 1-4 small targets each) are generated from
``data.split_seed`` on first use. Finishes in minutes on a 2-core CPU.

    python -m limijax.main --config=configs/synthetic.py --workdir=workdirs/synthetic
"""

from limijax.defaults import base_config


def get_config():
  c = base_config()
  c.data.name = 'synthetic'
  c.data.split = 'random'
  c.data.num_images = 600
  c.data.synthetic_size = 128
  c.data.image_size = 128
  c.num_epochs = 30
  c.batch_size = 10
  c.eval_every_epochs = 2
  return c
