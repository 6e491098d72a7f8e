"""Train Limi-Net: ``python -m limijax.main --config=configs/<name>.py [--workdir=DIR]``.

``--workdir`` defaults to ``workdirs/<config file stem>`` (printed first). Re-running
the same command on the same workdir resumes from the latest checkpoint. Any config key
can be overridden with ``--config.KEY=VALUE``; every key is checked before anything is
written.

Several processes (machines) train one run together when each is started with
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``, or with
``--distributed`` alone under a cluster manager JAX reads (SLURM, Open MPI); see the
README's "Several machines".

Process set-up: run as a command, it first adds an XLA flag and asks glibc for huge pages
(executing itself again once); :mod:`limijax.process` says which, why, and how to turn
each off.
"""

from __future__ import annotations

if __name__ == '__main__':  # a command: process set-up before JAX starts (limijax.process)
  from limijax import process as _process
  _process.set_up_command()

import json
import os

from absl import flags
from absl import logging
from ml_collections import config_flags

from limijax import defaults
from limijax.errors import run

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a command, so that every limijax module can be imported
  # into one process (tests, notebooks) without clashing flag names.
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Folder of this run (created if absent); default '
                      'workdirs/<config file stem>.')
  flags.DEFINE_bool('progress', True, 'Show progress bars.')
  flags.DEFINE_bool('library_logs', False, 'Also show the INFO log lines of other libraries '
                    '(TFDS, Orbax, ...); by default only their warnings and errors.')
  flags.DEFINE_bool('distributed', False, 'Join a multi-process run through '
                    'jax.distributed; implied by the three flags below. Alone, JAX reads '
                    'them from the cluster (SLURM, Open MPI).')
  flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0, the same for '
                      'every process (or JAX_COORDINATOR_ADDRESS).')
  flags.DEFINE_integer('num_processes', None, 'Processes in the run.', lower_bound=1)
  flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes - 1; process '
                       '0 writes the files.', lower_bound=0)


def default_workdir(config_path: str) -> str:
  """``workdirs/<config file stem>``: ``configs/nudt.py`` -> ``workdirs/nudt``."""
  return os.path.join('workdirs', os.path.splitext(os.path.basename(config_path))[0])


def _enable_compilation_cache() -> None:
  # Compiling the training step takes tens of seconds on a CPU; a persistent cache
  # makes a resumed or repeated run start at once.
  import jax  # pylint: disable=g-import-not-at-top
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir',
                      os.path.join(os.path.expanduser('~'), '.cache', 'limijax', 'jax'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def main(argv):
  config = defaults.checked(FLAGS.config)
  workdir = FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS['config']))
  print(f'workdir: {workdir}', flush=True)
  logging.set_verbosity(logging.INFO)
  if FLAGS.library_logs:
    from limijax.errors import QUIET_LIBRARIES  # pylint: disable=g-import-not-at-top
    logging.get_absl_handler().removeFilter(QUIET_LIBRARIES)
  _enable_compilation_cache()
  from limijax import distributed  # pylint: disable=g-import-not-at-top
  if distributed.requested(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           FLAGS.distributed):
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from limijax import train  # pylint: disable=g-import-not-at-top
  results = train.train_and_evaluate(config, workdir, progress=FLAGS.progress)
  if not distributed.is_primary():  # process 0 reports (and wrote) the results
    return
  from limijax.metrics import format_metrics as fmt  # pylint: disable=g-import-not-at-top
  runs, several = results['runs'], config.num_seeds > 1
  for r in runs:
    t = r['test']
    who = f'seed {r["seed"]}: ' if several else ''
    print(f'{who}best epoch {r["best_epoch"]}; test {fmt(t)}  ({t["num_images"]} images)')
  for seed, message in results['diverged'].items():
    print(f'seed {seed}: {message}')
  b = results['baselines'].get('tophat')
  if b:
    print(f'top-hat baseline on the same images: {fmt(b, ("miou", "pd", "fa"))}')
  for r in runs:
    print(f'wrote {os.path.join(r["workdir"], "results.json")}')
  if several:
    print(json.dumps({'test': {r['seed']: r['test'] for r in runs}, 'tophat': b}))
  else:
    print(json.dumps({'test': runs[0]['test'], 'tophat': b}))

if __name__ == '__main__':
  _define_flags()
  run(main)
