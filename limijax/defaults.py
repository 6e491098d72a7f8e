"""The base experiment config that every file under ``configs/`` starts from.

Config files stay small: each imports :func:`base_config`, overrides the keys that
make its experiment, and returns it. Every key a run may read is declared here, so a
mistyped ``--config.KEY=VALUE`` override fails (configs are locked by ``main``).
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # model init, augmentation, ITS; multi-seed runs vary only this
  c.num_seeds = 1  # train this many seeds (seed, seed+1, ...) in one vectorised process

  # --- data ---------------------------------------------------------------
  c.data = d = ml_collections.ConfigDict()
  d.name = 'synthetic'  # synthetic | nudt | irstd1k | nuaa | folder
  d.root = ''  # dataset folder on disk (layout detected); unused by synthetic
  d.data_dir = ''  # where prepared (TFDS array_record) data goes; '' = ~/.cache/limijax/tfds
  d.split = 'standard'  # standard (the dataset's split files) | random (paper's 8:2)
  d.split_seed = 0  # seeds the random split and the validation hold-out; not `seed`
  d.test_fraction = 0.2  # random split only
  d.val_fraction = 0.2  # share of the training split held out for validation
  d.image_size = 256  # training crop (square), a multiple of 16
  d.in_channels = 1
  d.num_images = 600  # synthetic only: images generated in all
  d.synthetic_size = 128  # synthetic only: side of each generated image
  d.crop_target_prob = 0.5  # P(training crop is forced to contain a target)
  d.num_workers = 0  # Grain worker processes for training (0 = in process)
  d.its = ml_collections.ConfigDict()
  d.its.enabled = True  # paper 3.2; False = the "w/o ITS" ablation
  d.its.prob = 0.5  # P(an image gets pseudo targets)
  d.its.max_targets = 3  # 1..max_targets pseudo targets per chosen image
  d.its.min_size = 1  # pseudo-target radius range, pixels
  d.its.max_size = 5
  d.its.min_contrast = 0.15  # peak above the local background mean, as a fraction of 255
  d.its.max_contrast = 0.6

  # --- model --------------------------------------------------------------
  c.model = m = ml_collections.ConfigDict()
  m.channels = (8, 16, 32, 32)  # LMB output channels (paper 3.3)
  m.stem_channels = 8
  m.stem = 'ses'  # ses | dsconv_bn  ("w/o SES")
  m.block = 'lmb'  # lmb | residual  ("w/o LMB")
  m.upsampler = 'huf'  # huf | bilinear  ("w/o HUF")
  m.head = 'c2f'  # c2f | fpn  ("w/o C2F")
  m.depthwise = 'auto'  # auto | grouped | shift

  # --- loss (paper eq. 1-4) ------------------------------------------------
  c.loss = l = ml_collections.ConfigDict()
  l.side_alphas = (0.1, 0.05, 0.01, 0.001)  # x8, x4, x2, x1 side outputs
  l.final_alpha = 0.0
  l.weight_base = 2000.0  # w_s = weight_base ** -alpha_s
  l.lambda_sce = 0.6
  l.lambda_dice = 0.4
  l.dice_eps = 1.0

  # --- optimisation (paper 4.2) --------------------------------------------
  c.num_epochs = 300
  c.batch_size = 10
  c.learning_rate = 5e-3
  c.weight_decay = 1e-2  # AdamW default of torch.optim.AdamW
  c.warmup_steps = 30
  c.warmup_start_factor = 0.05
  c.cosine_period_epochs = 10  # T_max of CosineAnnealingLR, in epochs
  c.min_learning_rate = 5e-4

  # --- evaluation and logging ---------------------------------------------
  c.eval_every_epochs = 1
  c.log_every_steps = 10
  c.checkpoint_every_epochs = 1
  c.tophat_baseline = True
  return c


def config_from_file(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of another config file, so that a variant (an ablation) starts
  from its base experiment's file instead of repeating its settings."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('limijax_base_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _fail(key: str, msg: str):
  from limijax.errors import UserError  # pylint: disable=g-import-not-at-top
  raise UserError(f'config key {key}: {msg}')


def checked(config) -> ml_collections.ConfigDict:
  """Return ``config`` after checking the keys a run relies on; a bad value raises a
  UserError naming the key. Also turns a config file that failed to load (ml_collections
  defers that error to the first access) into one clear line."""
  from limijax.errors import UserError  # pylint: disable=g-import-not-at-top
  if config is None:
    raise UserError('--config is required, e.g. --config=configs/synthetic.py')
  try:
    config.keys()
  except OSError as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    raise UserError('could not load the config file: ' + ' '.join(lines[-2:])) from None
  m, d = config.model, config.data
  if len(tuple(m.channels)) != 4 or not all(isinstance(c, int) and c > 0 for c in m.channels):
    _fail('model.channels', f'needs four positive integers, got {m.channels!r}')
  for key, value, allowed in (
      ('model.stem', m.stem, ('ses', 'dsconv_bn')), ('model.block', m.block, ('lmb', 'residual')),
      ('model.upsampler', m.upsampler, ('huf', 'bilinear')), ('model.head', m.head, ('c2f', 'fpn')),
      ('model.depthwise', m.depthwise, ('auto', 'grouped', 'shift')),
      ('data.split', d.split, ('standard', 'random'))):
    if value not in allowed:
      _fail(key, f'must be one of {allowed}, got {value!r}')
  if d.image_size <= 0 or d.image_size % 16:
    _fail('data.image_size', f'must be a positive multiple of 16, got {d.image_size}')
  for key in ('num_epochs', 'batch_size', 'eval_every_epochs', 'num_seeds'):
    if config[key] <= 0:
      _fail(key, f'must be positive, got {config[key]}')
  for key in ('val_fraction', 'test_fraction'):
    if not 0.0 < d[key] < 1.0:
      _fail(f'data.{key}', f'must lie strictly between 0 and 1, got {d[key]}')
  if len(tuple(config.loss.side_alphas)) != 4:
    _fail('loss.side_alphas', f'needs four values (x8, x4, x2, x1), got {config.loss.side_alphas!r}')
  return config
