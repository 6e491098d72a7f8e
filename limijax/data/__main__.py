"""``python -m limijax.data --root=DIR [--json] [--split=standard|random] [--split_dir=DIR]
[--preview=FILE.png] [--targets]``

Prints what the loader sees in a dataset folder (see :func:`limijax.data.inspect`) and
exits with status 2, one line on stderr, when the folder cannot be used for training.
Its flags are defined only when it runs as a program, so importing this module defines
none.
"""

from __future__ import annotations

import json
from typing import Sequence

from absl import flags

from limijax.data.load import folder_dataset
from limijax.data.plan import as_error
from limijax.data.report import format_report, inspect
from limijax.data.splits import SPLITS
from limijax.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; called only when it runs as a program."""
  flags.DEFINE_string('root', None, 'Dataset folder to inspect.')
  flags.DEFINE_bool('json', False, 'End the output with the report as one JSON line.')
  flags.DEFINE_string('split_dir', '', 'Folder of split lists (trainval.txt or train.txt, '
                      'and test.txt) replacing the layout\'s own (data.split_dir).')
  flags.DEFINE_string('split', None, 'standard or random (default: standard when the folder '
                      'has split files).')
  flags.DEFINE_integer('split_seed', 0, 'Seed of the random split and of the val hold-out.')
  flags.DEFINE_float('test_fraction', 0.2, 'Test share of the random split.')
  flags.DEFINE_float('val_fraction', 0.2, 'Share of the training split held out for validation.')
  flags.DEFINE_string('name', '', 'Dataset name (nudt, irstd1k, nuaa) when img_idx/ holds '
                      'split files of several datasets.')
  flags.DEFINE_string('preview', None, 'Also write a PNG of augmented training examples here.')
  flags.DEFINE_integer('image_size', 256, 'Training crop size shown by --preview.')
  flags.DEFINE_bool('targets', False, 'Also measure the targets of the training split (train '
                    'and val, never test): area, peak over the local background, SCR, and '
                    'the ITS ranges they suggest (limijax/data/targets.py).')


def main(argv: Sequence[str]) -> None:
  if not FLAGS.root:
    raise UserError('--root: not set; name the dataset folder to inspect')
  if FLAGS.split is not None and FLAGS.split not in SPLITS:
    raise UserError(f'--split: unknown split {FLAGS.split!r}; expected one of {", ".join(SPLITS)}')
  for key in ('test_fraction', 'val_fraction'):
    if not 0.0 <= FLAGS[key].value < 1.0:
      raise UserError(f'--{key}: {FLAGS[key].value} is not in [0, 1)')
  report = inspect(FLAGS.root, name=FLAGS.name, split=FLAGS.split, split_seed=FLAGS.split_seed,
                   test_fraction=FLAGS.test_fraction, val_fraction=FLAGS.val_fraction,
                   split_dir=FLAGS.split_dir)
  print(format_report(report), flush=True)
  dataset = None  # the training split, read once for --preview and --targets
  if (FLAGS.preview or FLAGS.targets) and report['usable']:
    dataset = folder_dataset(FLAGS.root, name=FLAGS.name or 'folder', split=report['split'],
                             split_seed=FLAGS.split_seed, test_fraction=FLAGS.test_fraction,
                             val_fraction=FLAGS.val_fraction, split_dir=FLAGS.split_dir)
  if FLAGS.preview and dataset is not None:
    from limijax import defaults  # pylint: disable=g-import-not-at-top
    from limijax import input_pipeline  # pylint: disable=g-import-not-at-top
    cfg = defaults.base_config()  # the preview shows what a default run would train on
    input_pipeline.save_preview(
        dataset.train, FLAGS.preview, image_size=FLAGS.image_size, mean=dataset.mean,
        std=dataset.std, seed=cfg.seed, its_cfg=cfg.data.its,
        crop_target_prob=cfg.data.crop_target_prob)
    print(f'preview:   {FLAGS.preview}', flush=True)
  if FLAGS.targets and dataset is not None:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    from limijax.data import targets  # pylint: disable=g-import-not-at-top
    records = [*dataset.train, *dataset.val]
    stats = targets.summary(targets.measure_all(tqdm(records, desc='targets', leave=False)))
    report['targets'] = {'images': len(records), **stats, 'its': targets.its_ranges(stats)}
    print(targets.format_summary(stats, report['targets']['its'],
                                 f'the training split ({len(records)} images, train + val)'),
          flush=True)
  if FLAGS.json:
    print(json.dumps(report), flush=True)
  if not report['usable']:
    raise as_error(report['problems'] or [f'{FLAGS.root}: cannot be used for training'],
                   FLAGS.root)


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from limijax.errors import cli_main  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(cli_main(main))
