"""The record of a run: ``metrics.jsonl`` (and its TensorBoard mirror) and ``curves.png``.

``metrics.jsonl`` holds one JSON object per event: ``train`` (step, epoch, loss and its
per-scale terms, lr, wall time, ``steps_per_s``, ``data_wait``), ``val`` and
``test_track`` (METRICS of an epoch), ``test`` (the tested checkpoint's METRICS) and
``diverged``. On resume it is cut back to what it held at the checkpoint, so a resumed run
writes the same lines as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

# Keys of metrics.jsonl's lines that measure this machine's speed rather than the run:
# they differ between two runs that are otherwise identical line for line.
TIMING_KEYS = ('wall_time', 'steps_per_s', 'data_wait')


class MetricsLog:
  """metrics.jsonl writer (and TensorBoard mirror) that can be cut back on resume.

  ``metrics.jsonl`` is the record; ``tb/`` mirrors it. On resume the record is cut back to
  the checkpoint and ``tb/`` is written anew from what is left, so the steps a resumed run
  replays appear once in TensorBoard, not twice.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tb = None
    self.tb_dir = os.path.join(workdir, 'tb')
    self.enabled = enabled  # False: another process of a multi-process run writes it

  def truncate(self, size: int) -> None:
    if not self.enabled:
      return
    if os.path.exists(self.path):
      with open(self.path, 'r+b') as f:
        f.truncate(size)
    if self.tb is not None:
      self.tb.close()
      self.tb = None
    shutil.rmtree(self.tb_dir, ignore_errors=True)
    for record in self.read():
      self._mirror(record)

  def size(self) -> int:
    return os.path.getsize(self.path) if os.path.exists(self.path) else 0

  def write(self, event: str, **values) -> None:
    if not self.enabled:
      return
    record = {'event': event, **values}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    self._mirror(record)

  def _mirror(self, record: dict) -> None:
    event = record['event']
    values = {k: v for k, v in record.items() if k != 'event'}
    try:
      if self.tb is None:
        self.tb = _summary_writer_class()(self.tb_dir)
      for k, v in values.items():
        if isinstance(v, (int, float)) and k not in ('step', 'epoch'):
          self.tb.add_scalar(f'{event}/{k}', v, values.get('step', 0))
      self.tb.flush()
    except ImportError:  # TensorBoard files are a convenience, metrics.jsonl is the record
      pass

  def read(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(l) for l in f if l.strip()]


def _summary_writer_class():
  """tensorboardX's ``SummaryWriter``, imported without PyTorch.

  When torch is installed, tensorboardX imports it (a second framework loaded into a JAX
  training process, with its start-up time and thread pools) only to recognise torch
  tensors, which are never passed here. Its import is
  refused for that moment unless torch is already loaded; torch itself stays importable.
  """
  if 'torch' in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules['torch']
  return SummaryWriter


PLOT_EVERY_S = 30.0  # the training loop redraws curves.png at most this often


def plot_curves(records: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  train = [r for r in records if r['event'] == 'train']
  val = [r for r in records if r['event'] == 'val']
  fig = Figure(figsize=(11, 3.4), dpi=100)
  ax1, ax2, ax3 = fig.subplots(1, 3)
  if train:
    ax1.plot([r['step'] for r in train], [r['loss'] for r in train], lw=1)
    ax1.set_yscale('log')
    ax3.plot([r['step'] for r in train], [r['lr'] for r in train], lw=1, color='tab:gray')
  ax1.set(title='training loss (C2F, eq. 4)', xlabel='step')
  ax3.set(title='learning rate', xlabel='step')
  for key, label in (('miou', 'mIoU'), ('niou', 'nIoU'), ('pd', 'Pd')):
    points = [(r['epoch'], r[key]) for r in val if r.get(key) is not None]  # pd None: no target
    if points:
      ax2.plot(*zip(*points), marker='.', label=label)
  tracked = [(r['epoch'], r['miou']) for r in records if r['event'] == 'test_track']
  if tracked:  # track_test: shown, never used to choose
    ax2.plot(*zip(*tracked), ls='--', lw=1, color='tab:gray', label='test mIoU')
  ax2.set(title='validation', xlabel='epoch', ylim=(0, 1))
  if val:
    ax2.legend(loc='lower right')
  # Fixed margins for this fixed figure: tight_layout measures every label first, which
  # costs a third of a plot's time (BENCHMARKS.md).
  fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.91, wspace=0.22)
  fig.savefig(path)
