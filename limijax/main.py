"""Train Limi-Net: ``python -m limijax.main --config=configs/<name>.py --workdir=DIR``.

Re-running the same command on the same workdir resumes from the latest checkpoint.
Any config key can be overridden with ``--config.KEY=VALUE``.
"""

from __future__ import annotations

import json
import logging as pylogging
import os

from absl import flags
from absl import logging
from ml_collections import config_flags

from limijax import defaults
from limijax.errors import UserError, run

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder of this run (created if absent).')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show progress bars.')


class _QuietLibraries(pylogging.Filter):
  """Keep the checkpointing library's per-save INFO chatter out of the run's log."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or '/orbax/' not in record.pathname


def _enable_compilation_cache() -> None:
  # Compiling the training step takes tens of seconds on a CPU; a persistent cache
  # makes a resumed or repeated run start at once.
  import jax  # pylint: disable=g-import-not-at-top
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir',
                      os.path.join(os.path.expanduser('~'), '.cache', 'limijax', 'jax'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def main(argv):
  if len(argv) > 1:
    raise UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _WORKDIR.value:
    raise UserError('--workdir is required')
  config = defaults.checked(_CONFIG.value)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  _enable_compilation_cache()
  from limijax import train  # pylint: disable=g-import-not-at-top
  results = train.train_and_evaluate(config, _WORKDIR.value, progress=_PROGRESS.value)
  t, b = results['test'], results['baselines'].get('tophat')
  print(f'best epoch {results["best_epoch"]}; test mIoU {t["miou"]:.4f}  nIoU {t["niou"]:.4f}  '
        f'Pd {t["pd"]:.4f}  Fa {t["fa_e6"]:.2f}e-6  ({t["num_images"]} images)')
  if b:
    print(f'top-hat baseline on the same images: mIoU {b["miou"]:.4f}  Pd {b["pd"]:.4f}  '
          f'Fa {b["fa_e6"]:.2f}e-6')
  print(f'wrote {os.path.join(_WORKDIR.value, "results.json")}')
  print(json.dumps({'test': t, 'tophat': b}))


if __name__ == '__main__':
  run(main)
