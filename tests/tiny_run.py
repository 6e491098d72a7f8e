"""The tiny synthetic run the training tests share (50 images of 32x32, 3 epochs of 8
steps): the same values as tests/test_cli_runs.py's run, so compiled programs are shared
through the persistent compilation cache."""

import pathlib

from limijax import defaults

REPO = pathlib.Path(__file__).resolve().parents[1]


def synthetic_config(data_dir, **overrides):
  config = defaults.config_from_file(str(REPO / 'configs' / 'synthetic.py'))
  # Same values as tests/test_cli_runs.py's tiny run, so compiled programs are shared.
  values = {'seed': 1, 'data.root': '/unused/by/synthetic', 'data.split_seed': 1,
            'num_epochs': 3, 'batch_size': 4, 'eval_every_epochs': 1,
            'data.image_size': 32, 'data.num_images': 50, 'data.synthetic_size': 32,
            'data.its.enabled': True, 'data.data_dir': data_dir, **overrides}
  for key, value in values.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.lock()
  return config
