"""One seed's run while it trains: :class:`SeedRun` (its folder, state, input stream,
checkpoints, metrics log, validation and final test) and :class:`TrainWindow` (the steps
between two ``train`` log lines).

A run of ``num_seeds`` seeds is a list of :class:`SeedRun`, one for a single seed: the
training loop (:func:`limijax.train.train_and_evaluate`) treats every seed the same way.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Callable

from absl import logging
import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from limijax import distributed
from limijax import input_pipeline
from limijax import metrics as metrics_lib
from limijax import model as model_lib
from limijax.errors import UserError
from limijax.evaluation import evaluate_source
from limijax.run_log import PLOT_EVERY_S, MetricsLog, plot_curves
from limijax.workdir import PACKED, load_run, managers, pack, restore_tree, write_best


def seed_config(config: ml_collections.ConfigDict, k: int) -> ml_collections.ConfigDict:
  """The single-run config of seed ``config.seed + k`` of a ``num_seeds`` run."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.seed, c.num_seeds = config.seed + k, 1
  return c


def seed_workdirs(config, workdir: str) -> list[str]:
  """The run folders of a run: ``workdir`` itself, or ``workdir/seed_<seed>`` per seed."""
  if config.num_seeds == 1:
    return [workdir]
  return [os.path.join(workdir, f'seed_{config.seed + k}') for k in range(config.num_seeds)]


class SeedRun:
  """One seed's run folder, train state and bookkeeping while it trains.

  ``meta`` is what a latest checkpoint records besides the state and the input stream's
  place: epoch, best validation mIoU and epoch, normalisation, wall time, the size of
  ``metrics.jsonl`` (cut back to it on resume) and the best test epoch (``track_test``).
  """

  def __init__(self, config, workdir: str, dataset, placement: distributed.Placement,
               primary: bool, keep_latest: int):
    self.seed, self.workdir, self.config, self.placement = config.seed, workdir, config, placement
    self.primary = primary  # the process that writes files
    self.mean, self.std = float(dataset.mean), float(dataset.std)
    self.train_iter = input_pipeline.make_train_iter(
        dataset.train, image_size=config.data.image_size, batch_size=config.batch_size,
        mean=self.mean, std=self.std, seed=config.seed, its_cfg=config.data.its,
        crop_target_prob=config.data.crop_target_prob, flips=config.data.flips,
        num_workers=config.data.num_workers)
    self.latest, self.best = managers(workdir, keep_latest=keep_latest)
    self.log = MetricsLog(workdir, enabled=primary)
    self.meta = {'epoch': 0, 'best_miou': -1.0, 'best_epoch': -1, 'mean': self.mean,
                 'std': self.std, 'log_size': 0, 'wall_time': 0.0, 'best_test': None}
    self.state = None
    self.diverged: str | None = None
    self.wall0 = self.last_plot = 0.0

  def start(self, new_state: Callable[[], dict], step: int | None, template) -> None:
    """A new state (``new_state()``), or checkpoint ``step``'s state (restored into
    ``template``'s shapes) and the input stream's place."""
    if step is None:
      state = new_state()
      self.log.truncate(0)
    else:
      here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      restored = restore_tree(self.latest, step, 'state', template, here,
                              data=grain.checkpoint.CheckpointRestore(self.train_iter))
      state, self.meta = restored['state'], restored['meta']
      if not (math.isclose(self.meta['mean'], self.mean, rel_tol=1e-6) and
              math.isclose(self.meta['std'], self.std, rel_tol=1e-6)):
        d = self.config.data
        raise UserError(f'the data under {d.root or d.name} changed since this run started '
                        f'(normalisation differs); use a new --workdir')
      self.log.truncate(self.meta['log_size'])
      logging.info('resuming %s at epoch %d (step %d)', self.workdir, self.meta['epoch'], step)
    # Committed to its device(s), as a restored state is: the step then compiles to the
    # same program whether the run starts or resumes (one persistent-cache entry).
    self.state = distributed.put(state, self.placement.state)
    self.wall0 = time.time() - self.meta['wall_time']
    self.last_plot = time.time()  # first drawn PLOT_EVERY_S into training

  def next_batch(self):
    """The seed's next training batch, on its device(s)."""
    return distributed.put(next(self.train_iter), self.placement.batch)

  def elapsed(self) -> float:
    return round(time.time() - self.wall0, 3)

  def diverge(self, bad_step: int, loss: float, epoch: int) -> None:
    last = self.latest.latest_step()
    where = (f'the last good checkpoint (step {last}) is in {self.workdir}/checkpoints'
             if last is not None else 'no checkpoint was written yet')
    self.log.write('diverged', step=bad_step, epoch=epoch, loss=str(loss))
    self.diverged = (f'training stopped: the loss became {loss} at step {bad_step} '
                     f'(epoch {epoch}); {where}')

  def validate(self, predict, val_set, test_set, step: int, epoch: int, progress: bool,
               name: str = '') -> None:
    """Score the validation images (and the test images with ``track_test``); keep the
    best checkpoint by validation mIoU (paper 4.1)."""
    s = distributed.local(self.state)
    score = functools.partial(evaluate_source, predict, s['params'], s['model_state'],
                              mean=self.mean, std=self.std, progress=progress,
                              batch_size=self.config.eval_batch_size)
    val = score(val_set, desc='val')
    self.log.write('val', step=step, epoch=epoch, wall_time=self.elapsed(), **val)
    logging.info('epoch %d%s: val %s', epoch, name, metrics_lib.format_metrics(val))
    if val['miou'] > self.meta['best_miou']:
      self.meta.update(best_miou=val['miou'], best_epoch=epoch)
      if step not in self.best.all_steps():  # else a resumed run redoing this epoch
        write_best(self.workdir, self.state['params'], self.state['model_state'],  # global
                   {'epoch': epoch, 'mean': self.mean, 'std': self.std, 'val': val}, step,
                   manager=self.best)
    if test_set is not None:  # reported as most papers do, never used to choose
      test = score(test_set, desc='test_track')
      self.log.write('test_track', step=step, epoch=epoch, wall_time=self.elapsed(), **test)
      best_test = self.meta.get('best_test')
      if best_test is None or test['miou'] > best_test['test']['miou']:
        self.meta['best_test'] = {'epoch': epoch, 'test': test}
    if self.primary and time.time() - self.last_plot >= PLOT_EVERY_S:
      # Drawing costs ~0.3 s: redrawn at most every PLOT_EVERY_S, and after the test.
      plot_curves(self.log.read(), os.path.join(self.workdir, 'curves.png'))
      self.last_plot = time.time()

  def save_latest(self, step: int, epoch: int) -> None:
    self.meta.update(epoch=epoch, log_size=self.log.size(), wall_time=time.time() - self.wall0,
                     layout=PACKED)
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(pack(self.state)),
        data=grain.checkpoint.CheckpointSave(self.train_iter),
        meta=ocp.args.JsonSave(dict(self.meta))), force=True)

  def test(self, predict, dataset, baselines: dict, step: int, progress: bool) -> dict:
    """Test the best checkpoint (paper 4.1); write and return ``results.json``."""
    run = load_run(self.workdir)
    best_meta = self.best.restore(self.best.latest_step(), args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']
    test = evaluate_source(predict, run.params, run.model_state, dataset.test, self.mean,
                           self.std, desc='test', progress=progress,
                           batch_size=self.config.eval_batch_size)
    results = {
        'best_epoch': best_meta['epoch'],
        'val': best_meta['val'],
        'test': test,
        'baselines': baselines,
        'params': model_lib.count_params(model_lib.inference_params(run.params)),
        'train_params': model_lib.count_params(run.params),
        'steps': step,
        'train_wall_time_s': round(self.meta['wall_time'], 1),
        'num_images': {'train': len(dataset.train), 'val': len(dataset.val),
                       'test': len(dataset.test)},
        'normalisation': {'mean': self.mean, 'std': self.std},
        'dataset': {'name': dataset.name, 'layout': dataset.layout},
    }
    if self.config.track_test and self.meta.get('best_test'):
      # The epoch whose test mIoU was highest, as most papers report: chosen on test.
      results['best_test_epoch'] = self.meta['best_test']
    self.log.write('test', step=step, epoch=best_meta['epoch'], **test)
    if self.primary:
      plot_curves(self.log.read(), os.path.join(self.workdir, 'curves.png'))
      tmp = os.path.join(self.workdir, 'results.json.tmp')
      with open(tmp, 'w') as f:
        json.dump(results, f, indent=2)
      os.replace(tmp, os.path.join(self.workdir, 'results.json'))
    return results


def restore_step(runs: list[SeedRun]) -> int | None:
  """The latest step every seed has a checkpoint of; newer ones are deleted, so that the
  seeds go on together from there (a kill may fall between two seeds' saves)."""
  common = set.intersection(*[set(r.latest.all_steps()) for r in runs])
  step = max(common) if common else None
  for r in runs:
    for s in sorted(r.latest.all_steps()):
      if step is None or s > step:
        r.latest.delete(s)
  return step


class TrainWindow:
  """The steps since the last ``train`` log line: every seed's step outputs (fetched from
  the device only here, once a window), the throughput, and the share of the time spent
  waiting for batches (``data_wait``)."""

  def __init__(self, num_workers: int):
    self.pending: list[tuple[int, list]] = []  # (step, each seed's outputs)
    self.num_workers = num_workers
    self.warned_slow_input = False
    self.start()

  def start(self) -> None:
    self.t0, self.data_wait = time.time(), 0.0

  def flush(self, runs: list[SeedRun], epoch: int, bar) -> None:
    """Check the window's losses (a seed with a NaN or infinite one stops), log means."""
    if not self.pending:
      return
    outs = jax.device_get(distributed.local([o for _, o in self.pending]))
    steps = [s for s, _ in self.pending]
    elapsed = max(time.time() - self.t0, 1e-9)
    rate, wait = len(steps) / elapsed, min(self.data_wait / elapsed, 1.0)
    for k, r in enumerate(runs):
      if r.diverged:
        continue
      per_step = [{key: float(v) for key, v in o[k].items()} for o in outs]
      bad = [(s, o['loss']) for s, o in zip(steps, per_step) if not math.isfinite(o['loss'])]
      if bad:
        r.diverge(*bad[0], epoch)
        if len(runs) > 1:
          logging.warning('seed %d: %s; the other seeds go on', r.seed, r.diverged)
        continue
      means = {key: float(np.mean([o[key] for o in per_step])) for key in per_step[0]}
      means['lr'] = per_step[-1]['lr']  # the rate of the logged step, not a mean
      # data_wait near 1: the input pipeline is the bottleneck; near 0: the step is.
      r.log.write('train', step=steps[-1], epoch=epoch, wall_time=r.elapsed(),
                  steps_per_s=round(rate, 3), data_wait=round(wait, 3), **means)
      if k == 0:
        bar.set_postfix(loss=f'{means["loss"]:.4f}', lr=f'{means["lr"]:.2e}',
                        steps_per_s=f'{rate:.2f}')
    if wait > 0.5 and steps[0] > 1 and len(steps) > 1 and not self.warned_slow_input:
      self.warned_slow_input = True  # once a run: the line says what to change
      logging.warning('the training loop waited for its input pipeline %.0f%% of steps '
                      '%d-%d: with data.num_workers=%d the pipeline is the bottleneck; more '
                      'worker processes (this machine has %d cores) would train faster',
                      100 * wait, steps[0], steps[-1], self.num_workers, os.cpu_count() or 1)
    self.pending.clear()
    self.start()
