"""``python -m limijax.bench``: see :mod:`limijax.bench`."""

from __future__ import annotations

if __name__ == '__main__':  # a command: process set-up before JAX starts (limijax.process)
  from limijax import process as _process
  _process.set_up_command()

import json
import sys

from absl import flags

from limijax.bench.harness import BURST, GROUPS
from limijax.bench.report import format_table, run_all, settings
from limijax.errors import run

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program, so that importing this module (tests) does not
  # clash with the flags of the other commands.
  flags.DEFINE_bool('json', False, 'End the output with the results as one JSON line.')
  flags.DEFINE_list('only', None, f'Measure only these groups: {",".join(GROUPS)} '
                    '(default: all).')
  flags.DEFINE_integer('repeats', 5, 'Interleaved rounds per row; in each, every backend '
                       f'makes {BURST} timed calls in a row (median of all).')
  flags.DEFINE_integer('loop_steps', None, 'Steps of the real training loop (default 30 '
                       'on a CPU, 300 on an accelerator).')
  flags.DEFINE_integer('batch_size', 10, 'Training batch size (the paper: 10).')
  flags.DEFINE_integer('image_size', 256, 'Training crop and inference side (a multiple '
                       'of 16); the large inference row and the evaluated split scale '
                       'with it.')
  flags.DEFINE_string('torch_device', 'cpu', 'Device of the PyTorch twin: cpu or cuda.')
  flags.DEFINE_bool('no_torch_compile', False, 'Skip torch.compile (slow to compile on '
                    'a CPU).')
  flags.DEFINE_integer('pipeline_batches', 10, 'Batches drawn per pipeline repetition.')
  flags.DEFINE_integer('workers', 0, 'Also time the pipeline with this many Grain worker '
                       'processes, and run the loop row with them (0: in process only, '
                       'as training runs by default).')


def main(argv):
  del argv
  s = settings(FLAGS.repeats, FLAGS.batch_size, FLAGS.image_size, FLAGS.loop_steps,
               FLAGS.torch_device, not FLAGS.no_torch_compile, FLAGS.pipeline_batches,
               FLAGS.workers, FLAGS.only)
  results = run_all(s)
  print(format_table(results))
  if FLAGS.json:
    sys.stdout.flush()
    print(json.dumps(results))


if __name__ == '__main__':
  _define_flags()
  run(main)
