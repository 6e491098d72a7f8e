"""The base experiment config that every file under ``configs/`` starts from.

Config files stay small: each imports :func:`base_config`, overrides the keys that
make its experiment, and returns it. Every key a run may read is declared here, so a
mistyped ``--config.KEY=VALUE`` override fails (configs are locked by ``main``).
"""

from __future__ import annotations

import ml_collections

# The readings of the paper's "cosine annealing with a period of 10" (config ``cosine``;
# limijax/schedule.py says what each computes).
COSINE_READINGS = ('annealing', 'restarts', 'single')


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # model init, augmentation, ITS; multi-seed runs vary only this
  c.num_seeds = 1  # train this many seeds (seed, seed+1, ...) in one process, each as alone
  c.vectorise_seeds = False  # num_seeds > 1: one vmap-ed step for a device's seeds (faster
  # on a GPU; each seed then rounds differently from the same seed trained alone)

  # --- data ---------------------------------------------------------------
  c.data = d = ml_collections.ConfigDict()
  d.name = 'synthetic'  # synthetic | nudt | irstd1k | nuaa | folder
  d.root = ''  # dataset folder on disk (layout detected); configs set datasets/<its folder>
  d.data_dir = ''  # where prepared (TFDS array_record) data goes; '' = ~/.cache/limijax/tfds
  d.split = 'standard'  # standard (the dataset's split files) | random (paper's 8:2)
  d.split_dir = ''  # a folder of split lists (trainval.txt or train.txt, test.txt) to use
  # instead of the layout's own, e.g. NUAA-SIRST's 50:50 split; standard split only
  d.split_seed = 0  # seeds the random split and the validation hold-out; not `seed`
  d.test_fraction = 0.2  # random split only
  d.val_fraction = 0.2  # share of the training split held out for validation
  d.image_size = 256  # training crop (square), a multiple of 16
  d.in_channels = 1
  d.num_images = 600  # synthetic only: images generated in all
  d.synthetic_size = 128  # synthetic only: side of each generated image
  d.crop_target_prob = 0.5  # P(training crop is forced to contain a target)
  d.flips = True  # random horizontal/vertical flips and transposes of training crops
  d.num_workers = 0  # Grain worker processes for training (0 = in process)
  d.its = ml_collections.ConfigDict()
  d.its.enabled = True  # paper 3.2; False = the "w/o ITS" ablation
  d.its.prob = 0.5  # P(an image gets pseudo targets)
  d.its.max_targets = 3  # 1..max_targets pseudo targets per chosen image
  d.its.min_size = 1.0  # pseudo-target radius range, pixels
  d.its.max_size = 5.0
  d.its.min_contrast = 0.15  # peak above the local background mean, as a fraction of 255
  d.its.max_contrast = 0.6
  d.its.line_prob = 0.0  # P(an image also gets bright thin lines painted as background)
  d.its.max_lines = 2  # 1..max_lines such lines per chosen image

  # --- model --------------------------------------------------------------
  c.model = m = ml_collections.ConfigDict()
  m.channels = (8, 16, 32, 32)  # LMB output channels (paper 3.3)
  m.stem_channels = 4  # SES's first standard conv (paper 3.2); its DSConv raises to channels[0]
  m.stem = 'ses'  # ses | dsconv_bn  ("w/o SES")
  m.block = 'lmb'  # lmb | residual  ("w/o LMB")
  m.upsampler = 'huf'  # huf | bilinear  ("w/o HUF")
  m.head = 'c2f'  # c2f | fpn  ("w/o C2F")
  m.norm = 'group'  # group | batch: the normalisation of every block outside SES
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
  c.cosine = 'annealing'  # annealing | restarts | single: the reading of the paper's
  # "cosine annealing with a period of 10" (limijax/schedule.py)
  c.cosine_period_epochs = 10  # T_max of CosineAnnealingLR (T_0 for restarts), in epochs
  c.min_learning_rate = 5e-4

  # --- evaluation and logging ---------------------------------------------
  c.eval_every_epochs = 1
  c.eval_batch_size = 16  # images of one shape scored together (results unchanged)
  c.log_every_steps = 10
  # Also score the test split at every validation (test_track events in metrics.jsonl)
  # and write the epoch with the best test mIoU to results.json as best_test_epoch: the
  # protocol of most published tables. Never used to choose anything; costs one test
  # pass per validation.
  c.track_test = False
  c.tophat_baseline = True  # also score a white top-hat on the test images (the floor)
  return c


def fill_defaults(stored: dict) -> dict:
  """A stored config (a run's ``config.json``) over :func:`base_config`'s values: a key
  added to limijax after the run was made reads as its default, which is what the run
  did. Lists become tuples, as config files write them."""
  out = base_config().to_dict()

  def fill(dst, src):
    for k, v in src.items():
      if isinstance(v, dict) and isinstance(dst.get(k), dict):
        fill(dst[k], v)
      else:
        dst[k] = tuple(v) if isinstance(v, list) else v

  fill(out, stored)
  return out


def diff_keys(a: dict, b: dict, prefix: str = '') -> list[str]:
  """Dotted keys whose values differ between two nested config dicts (as JSON)."""
  keys = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, '<absent>'), b.get(k, '<absent>')
    if isinstance(va, dict) and isinstance(vb, dict):
      keys += diff_keys(va, vb, f'{prefix}{k}.')
    elif va != vb:
      keys.append(f'{prefix}{k}')
  return keys


def config_from_file(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of another config file, so that a variant (an ablation) starts
  from its base experiment's file instead of repeating its settings."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('limijax_base_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _check_run_keys(config) -> None:
  """The keys that the training loop, the schedule and the data pipeline read."""
  from limijax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  for key in ('num_seeds', 'num_epochs', 'batch_size', 'eval_every_epochs', 'eval_batch_size',
              'log_every_steps', 'cosine_period_epochs'):
    if not (_int(config[key]) and config[key] > 0):
      raise ConfigError(key, f'must be a positive integer, got {config[key]!r}')
  for key in ('track_test', 'tophat_baseline', 'vectorise_seeds'):
    if not isinstance(config[key], bool):
      raise ConfigError(key, f'must be True or False, got {config[key]!r}')
  if config.cosine not in COSINE_READINGS:
    raise ConfigError('cosine', f'must be one of {", ".join(COSINE_READINGS)}; got '
                      f'{config.cosine!r}')
  if not _int(config.seed):
    raise ConfigError('seed', f'must be an integer, got {config.seed!r}')
  if not config.learning_rate > 0:
    raise ConfigError('learning_rate', f'must be > 0, got {config.learning_rate}')
  if not 0 <= config.min_learning_rate <= config.learning_rate:
    raise ConfigError('min_learning_rate', f'must be in [0, learning_rate '
                      f'({config.learning_rate})], got {config.min_learning_rate}')
  if not config.weight_decay >= 0:
    raise ConfigError('weight_decay', f'must be >= 0, got {config.weight_decay}')
  if not (_int(config.warmup_steps) and config.warmup_steps >= 0):
    raise ConfigError('warmup_steps', f'must be an integer >= 0, got {config.warmup_steps!r}')
  if not 0 < config.warmup_start_factor <= 1:
    raise ConfigError('warmup_start_factor', f'must be in (0, 1], got '
                      f'{config.warmup_start_factor}')


def _check_data_keys(d) -> None:
  from limijax import data, its, model, synthetic  # pylint: disable=g-import-not-at-top
  from limijax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  for key, allowed in (('name', data.NAMES), ('split', data.SPLITS)):
    if d[key] not in allowed:
      raise ConfigError(f'data.{key}', f'must be one of {", ".join(allowed)}; got {d[key]!r}')
  if not isinstance(d.split_dir, str):
    raise ConfigError('data.split_dir', f'must be a folder name, got {d.split_dir!r}')
  if d.split_dir and d.name == 'synthetic':
    raise ConfigError('data.split_dir', 'the synthetic dataset has no split lists; leave it '
                      'empty')
  if d.split_dir and d.split != 'standard':
    raise ConfigError('data.split_dir', f'split lists need data.split=standard, got '
                      f'{d.split!r}')
  if not (_int(d.split_seed) and d.split_seed >= 0):
    raise ConfigError('data.split_seed', f'must be an integer >= 0, got {d.split_seed!r}')
  for key in ('val_fraction', 'test_fraction'):
    if not 0.0 < d[key] < 1.0:
      raise ConfigError(f'data.{key}', f'must lie strictly between 0 and 1, got {d[key]}')
  if not (_int(d.image_size) and d.image_size > 0 and d.image_size % model.STRIDE == 0):
    raise ConfigError('data.image_size', f'must be a positive multiple of {model.STRIDE}, '
                      f'got {d.image_size!r}')
  if d.in_channels != 1:
    raise ConfigError('data.in_channels', f'must be 1 (images are read as grey), got '
                      f'{d.in_channels!r}')
  if not (_int(d.num_images) and d.num_images > 0):
    raise ConfigError('data.num_images', f'must be a positive integer, got {d.num_images!r}')
  if not (_int(d.synthetic_size) and d.synthetic_size >= synthetic.MIN_SIZE):
    raise ConfigError('data.synthetic_size', f'must be an integer >= {synthetic.MIN_SIZE}, '
                      f'got {d.synthetic_size!r}')
  if not 0.0 <= d.crop_target_prob <= 1.0:
    raise ConfigError('data.crop_target_prob', f'must be in [0, 1], got {d.crop_target_prob}')
  if not (_int(d.num_workers) and d.num_workers >= 0):
    raise ConfigError('data.num_workers', f'must be an integer >= 0, got {d.num_workers!r}')
  if not isinstance(d.flips, bool):
    raise ConfigError('data.flips', f'must be True or False, got {d.flips!r}')
  its.ITSConfig.from_any(d.its)  # checks every data.its key


def checked(config) -> ml_collections.ConfigDict:
  """Return ``config`` after checking every key a run reads; the first bad value raises a
  :class:`~limijax.errors.ConfigError` naming the key. Commands call this before they
  write anything. The allowed values of each key live in the module that uses them
  (``model.STEMS``, ``depthwise.IMPLS``, ``data.SPLITS``, ``its.ITSConfig.check``,
  ``losses.check_config``). Also turns a config file that failed to load (ml_collections
  defers that error to the first access) into one clear line."""
  from limijax import losses, model  # pylint: disable=g-import-not-at-top
  from limijax.errors import UserError  # pylint: disable=g-import-not-at-top
  if config is None:
    raise UserError('--config is required, e.g. --config=configs/synthetic.py')
  try:
    config.keys()
  except OSError as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    raise UserError('could not load the config file: ' + ' '.join(lines[-2:])) from None
  _check_run_keys(config)
  _check_data_keys(config.data)
  model.check_config(config.model)
  losses.check_config(config.loss)
  return config
