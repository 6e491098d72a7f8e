"""Make a limijax run folder from PyTorch weights of the twin (:mod:`limijax.torch_twin`).

    python -m limijax.import_torch --state_dict=FILE.pt --config=CONFIG.py --workdir=NEW [--mean=M --std=S]

``FILE`` is an export of ``python -m limijax.export`` (``.pt`` or ``.safetensors``) or a
bare ``state_dict`` saved with ``torch.save(model.state_dict(), FILE)``. ``--config`` is
an experiment config file (``--config.KEY=VALUE`` overrides allowed) whose model the
weights must fit: every missing, unexpected or wrongly shaped key is named. The
normalisation comes from the file when it holds one; otherwise ``--mean`` and ``--std``
(0..255 grey) are required, and given, they take precedence.

``NEW`` receives ``config.json`` and ``checkpoints/best`` in the format training writes,
so ``python -m limijax.evaluate --workdir=NEW`` and ``python -m limijax.predict
--workdir=NEW`` accept it. A folder that already holds a run is refused.

Process set-up: run as a command, it first adds an XLA flag and asks glibc for huge pages
(executing itself again once); :mod:`limijax.process` says which, why, and how to turn
each off.
"""

from __future__ import annotations

if __name__ == '__main__':  # a command: process set-up before JAX starts (limijax.process)
  from limijax import process as _process
  _process.set_up_command()

import math
import os

from absl import flags
from absl import logging
from ml_collections import config_flags

from limijax import defaults
from limijax.architecture import MODEL_KEYS
from limijax.errors import UserError, run

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a command (see the end of this file), never on import.
  flags.DEFINE_string('state_dict', None, 'PyTorch weights: an export (.pt, .safetensors) '
                      'or a bare state_dict saved with torch.save.')
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'New run folder to write.')
  flags.DEFINE_float('mean', None, 'Normalisation mean (0..255 grey), when the file has none.')
  flags.DEFINE_float('std', None, 'Normalisation std (0..255 grey), when the file has none.')


def holds_run(workdir: str) -> bool:
  return (os.path.exists(os.path.join(workdir, 'config.json'))
          or os.path.exists(os.path.join(workdir, 'checkpoints')))


def _architecture_diff(stored: dict, config) -> list[str]:
  from limijax import export  # pylint: disable=g-import-not-at-top
  mine = export.model_config(config)
  return [f'{k}={stored.get(k)!r} (--config: {mine[k]!r})' for k in MODEL_KEYS
          if k in stored and (list(stored[k]) if k == 'channels' else stored[k]) != mine[k]]


def import_state_dict(path: str, config, workdir: str, mean: float | None = None,
                      std: float | None = None) -> dict:
  """Write the run folder ``workdir``; returns its best checkpoint's meta."""
  if holds_run(workdir):
    raise UserError(f'workdir {workdir} already holds a run; import into a new --workdir')
  from limijax import export, torch_convert  # pylint: disable=g-import-not-at-top
  from limijax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  sd, stored_cfg, norm = export.read_torch_file(path)
  try:
    params, model_state = torch_convert.state_dict_to_flax(sd, config)
  except torch_convert.StateDictMismatch as e:
    diff = _architecture_diff(stored_cfg, config) if isinstance(stored_cfg, dict) else []
    extra = f'; {path} was exported from a model with {", ".join(diff)}' if diff else ''
    raise UserError(f'{path}: {e}{extra}') from None
  if mean is None or std is None:
    if mean is not None or std is not None:
      raise UserError('give --mean and --std together')
    if not norm:
      raise UserError(f'{path} holds no normalisation: give --mean and --std (the training '
                      f'split\'s grey mean and std on the 0..255 scale)')
    mean, std = norm['mean'], norm['std']
  mean, std = float(mean), float(std)
  if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
    raise UserError(f'normalisation needs a finite mean and std > 0, got {mean}, {std}')
  workdir_lib.claim_workdir(config, workdir)
  meta = {'epoch': 0, 'mean': mean, 'std': std, 'val': None,
          'imported_from': os.path.abspath(path)}
  import jax  # pylint: disable=g-import-not-at-top
  # device_put copies; jnp.asarray would compile a small program per leaf shape.
  workdir_lib.write_best(workdir, jax.device_put(params), jax.device_put(model_state), meta)
  return meta


def main(argv):
  for name in ('state_dict', 'workdir'):
    if not FLAGS[name].value:
      raise UserError(f'--{name} is required')
  logging.set_verbosity(logging.WARNING)  # the checkpoint library's INFO lines
  config = defaults.checked(FLAGS.config)
  if holds_run(FLAGS.workdir):  # before the weights are read
    raise UserError(f'workdir {FLAGS.workdir} already holds a run; import into a new '
                    f'--workdir')
  meta = import_state_dict(FLAGS.state_dict, config, FLAGS.workdir, FLAGS.mean, FLAGS.std)
  print(f'wrote {FLAGS.workdir} (config.json, checkpoints/best; normalisation mean '
        f'{meta["mean"]:.6g}, std {meta["std"]:.6g}); evaluate it with: python -m '
        f'limijax.evaluate --workdir={FLAGS.workdir}')


if __name__ == '__main__':
  _define_flags()
  run(main)
