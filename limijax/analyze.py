r"""Analyse where a model succeeds and fails: a report, the Pd-Fa curve, buckets, galleries.

Analyse a run's best checkpoint on its test (or validation) split::

  python -m limijax.analyze --workdir=RUN [--split=test|val] [--out=DIR]

Analyse any model's saved probability maps (8-bit grey PNGs, ``p = value / 255``, the
same stems and pairing rules as ``python -m limijax.evaluate --pred_dir``; ``python -m
limijax.predict --probs`` writes them)::

  python -m limijax.analyze --prob_dir=P --mask_dir=M [--image_dir=I] --out=DIR

``DIR`` (default ``RUN/analysis/<split>``) then holds ``report.md`` (the summary, with
the pictures embedded), ``roc.png`` / ``roc.json`` (the threshold sweep: Pd against Fa,
mIoU against the threshold, the Pd-Fa area), ``by_size.json`` / ``by_size.png`` and
``by_contrast.json`` / ``by_contrast.png`` (targets bucketed by area and by local
contrast), ``per_image.csv`` (worst image first) and ``gallery_missed.png`` /
``gallery_false_alarms.png`` (the ``--gallery`` worst cases). The definitions are in
:mod:`limijax.analysis`; docs/analysis.md says how to read them. At threshold 0.5 the
sweep's metrics are exactly ``evaluate``'s.

Everything is written into a temporary folder beside ``DIR``, which replaces ``DIR`` only
once complete: a failure leaves no half-written folder and an existing ``DIR`` as it was.
A bad input (a missing or mis-sized probability map, an unreadable file or folder, a run
without a checkpoint) stops with one line naming it, exit status 2, and nothing written.
The last stdout line is one JSON object; a progress bar and notes go to stderr. Without
``--workdir`` neither JAX nor the model is loaded.

Process set-up: run as a command, it first adds an XLA flag and asks glibc for huge pages
(executing itself again once); :mod:`limijax.process` says which, why, and how to turn
each off.
"""

from __future__ import annotations

if __name__ == '__main__':  # a command: process set-up before JAX starts (limijax.process)
  from limijax import process as _process
  _process.set_up_command()

import csv
import json
import os
import shutil
import sys
import tempfile
from typing import Callable, Sequence

from absl import flags
import numpy as np
from PIL import Image
import tqdm

from limijax import analysis
from limijax import evaluate
from limijax import image_io
from limijax import metrics
from limijax import predict
from limijax.errors import UserError, run

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program (see the end of this file), never on import.
  flags.DEFINE_string('workdir', None, 'Run folder whose best checkpoint to analyse.')
  flags.DEFINE_enum('split', 'test', ['test', 'val'], 'Split to analyse (--workdir).')
  flags.DEFINE_string('prob_dir', None, 'Folder of probability PNGs (value/255), the '
                      'masks\' stems.')
  flags.DEFINE_string('mask_dir', None, 'Folder of ground-truth masks (.png/.bmp).')
  flags.DEFINE_string('image_dir', None, 'Optional folder of the input images (--prob_dir): '
                      'for contrast and for the gallery pictures.')
  flags.DEFINE_string('out', None, 'Output folder (default RUN/analysis/<split>; required '
                      'with --prob_dir). Replaced as a whole when the analysis is complete.')
  flags.DEFINE_integer('gallery', 24, 'Worst cases shown in each gallery.', lower_bound=0)
  flags.DEFINE_float('fa_bound', analysis.FA_BOUND_E6, 'Fa bound (in 1e-6) of the Pd-Fa '
                     'area.', lower_bound=1e-9)


def _readable(call: Callable, *args):
  """``call(*args)``, an OSError (a folder without read permission) as one line."""
  try:
    return call(*args)
  except OSError as e:
    raise UserError(f'cannot read {e.filename or args[0]}: {e.strerror or e}') from None


def _image_paths(pairs, image_dir: str) -> list[str]:
  """The input image of each (probability map, mask) pair: the map's stem or the mask's,
  any of predict's image suffixes; sizes checked from the headers."""
  list_files = evaluate.list_files
  images = _readable(list_files, image_dir, predict.IMAGE_SUFFIXES, 'image')
  paths = []
  for prob_path, mask_path in pairs:
    stems = [os.path.splitext(os.path.basename(p))[0] for p in (prob_path, mask_path)]
    path = images.get(stems[0]) or images.get(stems[1])
    if path is None:
      raise UserError(f'no image for {prob_path} in {image_dir} (expected {stems[0]}.png, '
                      f'.bmp, ...)')
    (iw, ih), (mw, mh) = image_io.image_size(path), image_io.image_size(mask_path, 'mask')
    if (iw, ih) != (mw, mh):
      raise UserError(f'size mismatch: image {path} is {iw}x{ih} but mask {mask_path} is '
                      f'{mw}x{mh} (width x height)')
    paths.append(path)
  return paths


def folder_samples(prob_dir: str, mask_dir: str, image_dir: str | None = None,
                   progress: bool = True) -> list[analysis.Sample]:
  """The samples of saved probability maps, read and paired as ``evaluate --pred_dir``
  reads them; every pairing and size is checked before any pixel is read."""
  if image_dir is not None and not os.path.isdir(image_dir):
    raise UserError(f'image folder not found: {image_dir}')
  pairs = _readable(evaluate.pair_files, prob_dir, mask_dir)
  images = _image_paths(pairs, image_dir) if image_dir else [None] * len(pairs)
  samples, non_binary = [], 0
  for (prob_path, mask_path), image_path in tqdm.tqdm(
      list(zip(pairs, images)), desc='reading', unit='img', file=sys.stderr, leave=False,
      disable=not progress):
    values = image_io.read_image(prob_path, 'prediction', stretch_16bit=False)
    mask, odd = image_io.read_mask_info(mask_path)
    non_binary += odd
    if values.shape != mask.shape:  # the header said otherwise; the decoder decides
      raise UserError(f'size mismatch: prediction {prob_path} {values.shape} vs mask '
                      f'{mask_path} {mask.shape}')
    image = None
    if image_path is not None:
      image = image_io.read_image(image_path)
      if image.shape != mask.shape:
        raise UserError(f'size mismatch: image {image_path} {image.shape} vs mask '
                        f'{mask_path} {mask.shape}')
    stem = os.path.splitext(os.path.basename(prob_path))[0]
    samples.append(analysis.Sample(stem, mask.astype(bool), values, False, image))
  if non_binary:
    print(f'warning: {image_io.non_binary_mask_warning(non_binary, len(pairs))}',
          file=sys.stderr, flush=True)
  return samples


def workdir_samples(workdir: str, split: str) -> tuple[list[analysis.Sample], dict]:
  """The samples of a run's best checkpoint on ``split`` (its logits), and the split's
  METRICS as ``evaluate --workdir`` prints them."""
  if not os.path.isdir(workdir):
    raise UserError(f'workdir not found: {workdir}')
  from limijax import evaluation  # pylint: disable=g-import-not-at-top  # loads JAX
  records, result = evaluation.split_logits(workdir, split)
  return [analysis.Sample(r['id'], r['mask'], r['logits'], True, r['image'])
          for r in records], result


def write_atomically(out: str, write: Callable[[str], None]) -> None:
  """``write(folder)`` into a new folder beside ``out``, renamed to ``out`` (replacing an
  existing one) only when ``write`` returns; on any failure nothing is left behind."""
  out = os.path.abspath(out)
  parent, name = os.path.split(out)
  made = parent
  while made and not os.path.isdir(os.path.dirname(made)):
    made = os.path.dirname(made)  # the topmost folder that makedirs will create
  made = None if os.path.isdir(parent) else made
  tmp = None
  try:
    try:
      os.makedirs(parent, exist_ok=True)
      tmp = tempfile.mkdtemp(prefix=f'.{name}.tmp-', dir=parent)
    except OSError as e:
      raise UserError(f'cannot write into {parent}: {e.strerror or e}') from None
    write(tmp)
    if os.path.isdir(out):
      old = tempfile.mkdtemp(prefix=f'.{name}.old-', dir=parent)
      os.rename(out, old)  # onto the empty folder mkdtemp made: atomic on POSIX
      try:
        os.rename(tmp, out)
      except OSError:
        os.rename(old, out)
        raise
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, out)
    tmp = None
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
      if made is not None:
        shutil.rmtree(made, ignore_errors=True)


def _json(path: str, value) -> None:
  with open(path, 'w') as f:
    json.dump(value, f, indent=1)
    f.write('\n')


def _figure(size):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(figsize=size, dpi=100)


def plot_sweep(result: analysis.Analysis, path: str) -> None:
  """Pd against Fa (log axis; Fa = 0 drawn at half a pixel's Fa) with the operating point
  and the bound marked, and mIoU, nIoU and Pd against the threshold."""
  fig = _figure((11, 4))
  ax1, ax2 = fig.subplots(1, 2)
  curve, op = result.curve, result.operating_point
  floor = 0.5e6 / max(op['num_pixels'], 1)
  fa = [max(p['fa_e6'], floor) for p in curve]
  pd = [np.nan if p['pd'] is None else p['pd'] for p in curve]
  ax1.plot(fa, pd, marker='.', ms=3, lw=1)
  ax1.plot([max(op['fa_e6'], floor)], [np.nan if op['pd'] is None else op['pd']], 'o',
           color='tab:red', ms=8, label=f'threshold {analysis.OPERATING_POINT}')
  ax1.axvline(result.fa_bound_e6, ls='--', lw=1, color='tab:gray',
              label=f'Fa bound {result.fa_bound_e6:g}e-6')
  ax1.set_xscale('log')
  from matplotlib.ticker import NullFormatter  # pylint: disable=g-import-not-at-top
  ax1.xaxis.set_minor_formatter(NullFormatter())  # labels at the decades only
  area = result.area
  ax1.set(xlabel='Fa (1e-6, false-alarm components)', ylabel='Pd', ylim=(-0.02, 1.02),
          title='Pd-Fa' + ('' if area is None else f' (area to the bound {area:.3f})'))
  ax1.legend(loc='lower right')
  t = result.thresholds
  ax2.plot(t, [p['miou'] for p in curve], label='mIoU')
  ax2.plot(t, [p['niou'] for p in curve], label='nIoU')
  ax2.plot(t, pd, label='Pd', lw=1, ls=':')
  ax2.axvline(analysis.OPERATING_POINT, ls='--', lw=1, color='tab:gray')
  ax2.set(xlabel='probability threshold', ylim=(0, 1.02), title='against the threshold')
  ax2.legend(loc='best')
  fig.subplots_adjust(left=0.06, right=0.99, bottom=0.13, top=0.91, wspace=0.18)
  fig.savefig(path)


def plot_buckets(rows: list[dict], title: str, path: str) -> None:
  """Pd and mean IoU per bucket (with the number of targets), and misses per bucket."""
  fig = _figure((10, 3.6))
  ax1, ax2 = fig.subplots(1, 2)
  x = np.arange(len(rows))
  names = [f"{r['bucket']}\n(n={r['targets']})" for r in rows]
  value = lambda key: [np.nan if r[key] is None else r[key] for r in rows]
  ax1.bar(x - 0.2, value('pd'), 0.4, label='Pd')
  ax1.bar(x + 0.2, value('mean_iou'), 0.4, label='mean IoU')
  ax1.set(xticks=x, xticklabels=names, ylim=(0, 1.25), yticks=np.linspace(0, 1, 6),
          title=f'{title}: Pd and IoU')
  ax1.legend(loc='upper left', fontsize=8, ncol=2)  # in the headroom above 1
  ax2.bar(x, [r['missed'] for r in rows], 0.6, color='tab:blue')
  ax2.set(xticks=x, xticklabels=names, title=f'{title}: missed targets')
  ax2.yaxis.get_major_locator().set_params(integer=True)
  fig.subplots_adjust(left=0.06, right=0.99, bottom=0.2, top=0.9, wspace=0.2)
  fig.savefig(path)


_CSV_FIELDS = ('stem', 'height', 'width', 'targets', 'matched', 'missed', 'fa_components',
               'fa_pixels', 'iou')


def _fmt(v, spec='.4f') -> str:
  return 'n/a' if v is None else format(v, spec)


def _table(header: Sequence[str], lines: list[Sequence[str]]) -> list[str]:
  return (['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
          + ['| ' + ' | '.join(line) + ' |' for line in lines])


def report(result: analysis.Analysis, source: str, buckets: dict, shown: dict) -> str:
  """report.md: the headline METRICS, the sweep, the buckets, the worst images, galleries."""
  op, area = result.operating_point, result.area
  best = max(range(len(result.curve)), key=lambda k: result.curve[k]['miou'])
  t = result.thresholds
  out = [f'# Analysis of {source}', '',
         f"{op['num_images']} images, {op['num_targets']} targets. At threshold "
         f'{analysis.OPERATING_POINT} (the operating point, exactly what `evaluate` prints):',
         '', f'    {metrics.format_metrics(op, ("miou", "niou", "pd", "fa", "fa_pixel"))}', '',
         f'Pd-Fa area up to Fa = {result.fa_bound_e6:g}e-6: **{_fmt(area, ".3f")}** (the '
         'mean, over false-alarm budgets from 0 to the bound, of the best Pd the sweep '
         f'reaches within the budget; 1 is perfect). mIoU peaks at threshold {t[best]:g} '
         f"({result.curve[best]['miou']:.4f}).", '',
         '## Threshold sweep', '', '![Pd-Fa and metrics against the threshold](roc.png)', '']
  lines = []
  for k in np.flatnonzero(np.isin(t, (0.1, 0.3, 0.5, 0.7, 0.9))):
    p = result.curve[k]
    lines.append([f'{t[k]:g}', _fmt(p['pd']), f"{p['fa_e6']:.2f}", f"{p['miou']:.4f}",
                  f"{p['niou']:.4f}"])
  out += _table(('threshold', 'Pd', 'Fa (1e-6)', 'mIoU', 'nIoU'), lines)
  out += ['', 'Every threshold is in roc.json.']
  for key, title, unit in (('size', 'By target size', 'area (px)'),
                           ('contrast', 'By local contrast', 'SCR')):
    out += ['', f'## {title}', '', f'![{title}](by_{key}.png)', '']
    out += _table((unit, 'targets', 'found', 'missed', 'Pd', 'mean IoU'), [
        [r['bucket'], str(r['targets']), str(r['matched']), str(r['missed']),
         _fmt(r['pd']), _fmt(r['mean_iou'])] for r in buckets[key]])
  if not result.has_images:
    out += ['', 'No grey images were given (--image_dir), so contrast is unknown (n/a) and '
            'the galleries show the probability map.']
  out += ['', '## Worst images', '', 'The first 10 lines of per_image.csv (most missed '
          'targets, then most false-alarm pixels, then lowest IoU):', '']
  out += _table(('image', 'targets', 'missed', 'false alarms', 'FA pixels', 'IoU'), [
      [r.stem, str(r.targets), str(r.missed), str(r.fa_components), str(r.fa_pixels),
       _fmt(r.iou)] for r in analysis.worst_first(result.rows)[:10]])
  for name, title, what in (('missed', 'Missed targets', 'missed targets, clearest (highest '
                             'contrast) first'),
                            ('false_alarms', 'False alarms', 'false alarms, largest first')):
    n, total = shown[name]
    out += ['', f'## {title}', '', f'{n} of {total} {what}; red: found, blue: missed, '
            'yellow: false alarm.', '', f'![{title}](gallery_{name}.png)']
  return '\n'.join(out) + '\n'


def write_outputs(folder: str, result: analysis.Analysis, samples, source: str,
                  gallery: int) -> None:
  """Every file of the analysis into ``folder`` (see the module docstring)."""
  op = result.operating_point
  _json(os.path.join(folder, 'roc.json'), {
      'source': source, 'operating_threshold': analysis.OPERATING_POINT,
      'operating_point': op, 'fa_bound_e6': result.fa_bound_e6,
      'pd_fa_area': result.area,
      'pd_fa_area_definition': '(1/B) * integral over f in [0, B] of best(f) df, best(f) = '
                               'the highest Pd of a threshold whose Fa <= f (0 if none), '
                               'B = fa_bound_e6, Fa in 1e-6',
      'points': [{'threshold': float(t), **p} for t, p in zip(result.thresholds,
                                                              result.curve)]})
  plot_sweep(result, os.path.join(folder, 'roc.png'))
  tables = {}
  for key, title in (('size', 'target area (px)'), ('contrast', 'local contrast (SCR)')):
    tables[key] = analysis.buckets(result.targets, key)
    extra = ({'ring_radius': analysis.RING_RADIUS, 'min_ring_std': analysis.MIN_RING_STD,
              'definition': '(mean of the target - mean of the ring) / std of the ring; '
                            'ring: pixels within Chebyshev distance ring_radius of the '
                            'target that belong to no target; std floored at min_ring_std',
              'images_given': result.has_images} if key == 'contrast' else {})
    _json(os.path.join(folder, f'by_{key}.json'), {
        'threshold': analysis.OPERATING_POINT, 'num_targets': len(result.targets), **extra,
        'buckets': tables[key]})
    plot_buckets(tables[key], title, os.path.join(folder, f'by_{key}.png'))
  with open(os.path.join(folder, 'per_image.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(_CSV_FIELDS)
    for r in analysis.worst_first(result.rows):
      writer.writerow([*(getattr(r, k) for k in _CSV_FIELDS[:-1]),
                       '' if r.iou is None else f'{r.iou:.6f}'])
  shown = {}
  for name, cases, colour in (
      ('missed', analysis.worst_missed(result.targets), predict.MISS_COLOUR),
      ('false_alarms', analysis.worst_false_alarms(result.false_alarms),
       predict.FALSE_ALARM_COLOUR)):
    picture = analysis.gallery(cases[:gallery], samples, colour)
    Image.fromarray(picture).save(os.path.join(folder, f'gallery_{name}.png'))
    shown[name] = (min(gallery, len(cases)), len(cases))
  with open(os.path.join(folder, 'report.md'), 'w') as f:
    f.write(report(result, source, tables, shown))


def main(argv: Sequence[str]) -> None:
  del argv
  workdir, prob_dir, mask_dir = FLAGS.workdir, FLAGS.prob_dir, FLAGS.mask_dir
  folders_mode = prob_dir is not None or mask_dir is not None or FLAGS.image_dir is not None
  if workdir is not None and folders_mode:
    raise UserError('give either --workdir or --prob_dir/--mask_dir, not both')
  if workdir is None and not folders_mode:
    raise UserError('nothing to analyse: give --workdir=RUN, or --prob_dir=P and '
                    '--mask_dir=M with --out=DIR')
  if folders_mode and (prob_dir is None or mask_dir is None):
    raise UserError('--prob_dir and --mask_dir must be given together')
  if folders_mode and FLAGS.out is None:
    raise UserError('--out is required with --prob_dir')
  out = FLAGS.out or os.path.join(workdir, 'analysis', FLAGS.split)
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f'--out {out} exists and is not a folder')
  evaluated = None
  if workdir is not None:
    samples, evaluated = workdir_samples(workdir, FLAGS.split)
    source = f'{workdir} ({FLAGS.split} split)'
  else:
    samples = folder_samples(prob_dir, mask_dir, FLAGS.image_dir)
    source = f'{prob_dir} against {mask_dir}'
  with tqdm.tqdm(total=len(samples), desc='analyse', unit='img', file=sys.stderr,
                 leave=False) as bar:
    result = analysis.analyse(samples, fa_bound_e6=FLAGS.fa_bound, progress=bar.update)
  if evaluated is not None and evaluated != result.operating_point:
    print('warning: the sweep at 0.5 differs from evaluate\'s METRICS', file=sys.stderr)
  write_atomically(out, lambda folder: write_outputs(folder, result, samples, source,
                                                     FLAGS.gallery))
  op = result.operating_point
  print(f"{metrics.format_metrics(op)}  Pd-Fa area {_fmt(result.area, '.3f')} "
        f'(to {result.fa_bound_e6:g}e-6)  -> {out}/report.md')
  print(json.dumps({'out': os.path.abspath(out), 'operating_point': op,
                    'pd_fa_area': result.area, 'fa_bound_e6': result.fa_bound_e6}),
        flush=True)


if __name__ == '__main__':
  _define_flags()
  run(main)
