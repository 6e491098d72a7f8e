"""Mean and spread over seeds: ``python -m limijax.aggregate ROOT [--json]``.

Finds every run under ROOT, at any depth (``launch/seeds.sh`` writes ``ROOT/seed_<k>``):
a *run* is a folder holding both ``config.json`` and ``results.json``. A folder with
``config.json`` but no ``results.json`` is an unfinished run; it is listed as skipped in
one line on stderr and left out. A run folder that holds other runs below it (a process
that trained several seeds into ``seed_<k>`` sub-folders) counts through those sub-runs
only. ``checkpoints/`` and ``tb/`` folders are not searched.

Printed: one row per run, then a markdown table with, for every numeric key of the test
METRICS and for ``best_epoch``, ``mean ± std``, min, max and n. ``std`` is the sample
standard deviation (``ddof=1``); with a single run it is undefined, so the cell holds the
mean alone and the JSON has ``"std": null``. A ``null`` value (``pd`` of a test set without
targets) is left out of that key's n, mean and spread. ``ROOT/aggregate.png`` gets every
seed's validation mIoU curve (from the ``val`` events of ``metrics.jsonl``). When every
run was trained with ``track_test`` (test scored at every validation, never used to
choose), a second table gives the test metrics under both protocols: *val-selected*
(the best validation epoch, tested once: what limijax reports) and *best test epoch*
(the epoch with the best test mIoU: what most published tables report); the JSON has
them as ``best_test_epoch: {"epoch": stats, "test": {key: stats}}`` (null otherwise).
The runs must be seeds of one config: only ``seed``, ``track_test`` and
``vectorise_seeds`` may differ (else one line names the keys and two runs). The last
stdout line is always one JSON object: ``{"root", "n", "runs", "seeds", "skipped",
"best_epoch", "test": {key: {"mean", "std", "min", "max", "n"}}, "val": {...}, "params",
"config"}`` with ``config`` the shared config without ``seed`` (over the defaults: a key
added since a run was made reads as its default); ``--json`` changes nothing.

``python -m limijax.aggregate --table2 ROOT [--intervals]`` prints the paper's Table 2
(ablations) from ``ROOT/<row>/`` folders, each aggregated as above (:mod:`limijax.table2`).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Any

from limijax.defaults import diff_keys, fill_defaults
from limijax.errors import UserError, run
from limijax.metrics import format_metrics

SKIP_DIRS = ('checkpoints', 'tb')
# Shown first, in this order; every other numeric test key follows in results.json order.
HEADLINE = ('miou', 'niou', 'pd', 'fa_e6', 'fa_pixel_e6', 'fa_per_mp')
PLOT_NAME = 'aggregate.png'


# --------------------------------------------------------------------------- finding runs
def _natural(path: str):
  """Sort key: ``seed_2`` before ``seed_10``."""
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', path)]


def find_runs(root: str) -> tuple[list[str], list[str]]:
  """``(finished, unfinished)`` run folders under ``root`` (``root`` itself included)."""
  finished, unfinished = [], []
  # Paths are root joined with sub-folders ('.' gives './a'), so prefixes compare as paths.
  for dirpath, dirnames, filenames in os.walk(os.path.normpath(root)):
    dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
    if 'config.json' in filenames:
      (finished if 'results.json' in filenames else unfinished).append(dirpath)

  def has_below(path, candidates):
    return any(c != path and c.startswith(path + os.sep) for c in candidates)

  runs = [p for p in finished if not has_below(p, finished)]
  # A folder with runs (of either kind) below it holds sub-runs; it is not one itself.
  skipped = [p for p in unfinished if not has_below(p, finished + unfinished)]
  return sorted(runs, key=_natural), sorted(skipped, key=_natural)


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'{path} is unreadable: {e}') from None


def _val_curve(run_dir: str) -> list[tuple[int, float]]:
  """``(epoch, val mIoU)`` from metrics.jsonl; a resumed run's repeated epoch counts once."""
  path = os.path.join(run_dir, 'metrics.jsonl')
  by_epoch = {}
  if not os.path.exists(path):
    return []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue  # a line cut short by a killed process
      if record.get('event') == 'val' and record.get('miou') is not None:
        by_epoch[int(record['epoch'])] = float(record['miou'])
  return sorted(by_epoch.items())


def load_run(run_dir: str) -> dict:
  config = _read_json(os.path.join(run_dir, 'config.json'))
  results = _read_json(os.path.join(run_dir, 'results.json'))
  if not isinstance(config, dict) or not isinstance(results, dict) or 'test' not in results:
    raise UserError(f'{run_dir} does not hold a limijax run (config.json and results.json '
                    f'with "test")')
  config = fill_defaults(config)  # keys added since the run read as their defaults
  for m in (results.get('val'), results.get('test'),
            (results.get('best_test_epoch') or {}).get('test')):
    if isinstance(m, dict) and 'fa_per_mp' not in m and m.get('num_pixels'):  # older runs
      m['fa_per_mp'] = m.get('num_false_alarm_components', 0) / m['num_pixels'] * 1e6
  return {'path': run_dir, 'config': config, 'results': results, 'seed': config.get('seed')}


# --------------------------------------------------------------------------- statistics
def is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def stats(values) -> dict:
  """``mean``, sample ``std`` (ddof 1; None for fewer than 2), ``min``, ``max`` and ``n``
  of the values that are numbers (None values are left out)."""
  xs = [float(v) for v in values if is_number(v)]
  n = len(xs)
  if not n:
    return {'mean': None, 'std': None, 'min': None, 'max': None, 'n': 0}
  mean = math.fsum(xs) / n
  std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
  return {'mean': mean, 'std': std, 'min': min(xs), 'max': max(xs), 'n': n}


def _numeric_keys(dicts: list[dict]) -> list[str]:
  keys = []
  for d in dicts:
    for k, v in d.items():
      if k not in keys and (is_number(v) or v is None):
        keys.append(k)
  keys = [k for k in keys if any(is_number(d.get(k)) for d in dicts) or k in HEADLINE]
  return [k for k in HEADLINE if k in keys] + [k for k in keys if k not in HEADLINE]


# Keys that may differ between the seeds of one config: they change what is recorded,
# not what is trained.
NOT_THE_EXPERIMENT = ('seed', 'track_test', 'vectorise_seeds')


def _check_one_config(runs: list[dict], root: str) -> dict:
  def strip(config):
    return {k: v for k, v in config.items() if k not in NOT_THE_EXPERIMENT}

  first = strip(runs[0]['config'])
  for r in runs[1:]:
    diff = diff_keys(first, strip(r['config']))
    if diff:
      shown = ', '.join(diff[:6]) + (' ...' if len(diff) > 6 else '')
      from limijax import table2  # pylint: disable=g-import-not-at-top
      hint = ('; for the row folders of launch/table2.sh or launch/choices.sh use --table2'
              if any(os.path.isdir(f) for _, name, _ in table2.ROWS
                     for f in table2.row_folders(root, name)) else '')
      # The first run's folder right under root, when the two runs sit in different ones
      # and it holds runs rather than being one (an arm or row each): one to aggregate.
      top_a, top_b = (os.path.relpath(x['path'], root).split(os.sep)[0] for x in (runs[0], r))
      folder = os.path.join(root, top_a)
      example = (f', e.g. {folder}' if top_a != top_b and os.curdir not in (top_a, top_b)
                 and not os.path.isfile(os.path.join(folder, 'results.json')) else '')
      raise UserError(f'runs under {root} differ in more than seed, at {shown} (e.g. '
                      f'{runs[0]["path"]} and {r["path"]}); aggregate the seeds of one config '
                      f'at a time{example}{hint}')
  return first


def collect(root: str) -> dict:
  """Every finished run under ``root`` and their statistics; raises UserError when there
  is none or when their configs differ in anything but ``seed``."""
  if not os.path.isdir(root):
    raise UserError(f'{root} is not a folder')
  paths, skipped = find_runs(root)
  if not paths:
    what = f'; {len(skipped)} unfinished (no results.json)' if skipped else ''
    raise UserError(f'no finished run under {root} (a folder holding config.json and '
                    f'results.json){what}')
  runs = [load_run(p) for p in paths]
  config = _check_one_config(runs, root)
  tests = [r['results']['test'] for r in runs]
  vals = [r['results'].get('val') or {} for r in runs]
  params = [r['results'].get('params') for r in runs]
  tracked = [r['results'].get('best_test_epoch') for r in runs]
  best_test = None
  if all(tracked):  # every run scored test at each validation (track_test)
    best_test = {
        'epoch': stats(t['epoch'] for t in tracked),
        'test': {k: stats(t['test'].get(k) for t in tracked)
                 for k in _numeric_keys([t['test'] for t in tracked])},
    }
  return {
      'root': root,
      'n': len(runs),
      'runs': paths,
      'seeds': [r['seed'] for r in runs],
      'skipped': skipped,
      'best_epoch': stats(r['results'].get('best_epoch') for r in runs),
      'test': {k: stats(t.get(k) for t in tests) for k in _numeric_keys(tests)},
      'val': {k: stats(v.get(k) for v in vals) for k in _numeric_keys(vals)},
      'best_test_epoch': best_test,
      'untracked': [r['path'] for r, t in zip(runs, tracked) if not t],
      'params': params[0] if len(set(params)) == 1 else stats(params),
      'config': config,
      '_runs': runs,
  }


# --------------------------------------------------------------------------- printing
def _num(v: float | None, spec: str) -> str:
  return 'n/a' if v is None else format(v, spec)


def mean_std(s: dict, spec: str, scale: float = 1.0, n: int | None = None) -> str:
  """``mean ± std`` of ``stats`` (scaled); the mean alone when std is undefined (one
  value), ``n/a`` when there is no value; `` (n=k)`` appended when k differs from ``n``."""
  if s['mean'] is None:
    return 'n/a'
  cell = _num(s['mean'] * scale, spec)
  if s['std'] is not None:
    cell += f' ± {_num(s["std"] * scale, spec)}'
  return cell if n is None or s['n'] == n else f'{cell} (n={s["n"]})'


def _spec(key: str) -> tuple[str, str]:
  """Format of (mean and std, min and max) for a key of METRICS or best_epoch."""
  if key in ('miou', 'niou', 'niou_nonempty', 'pd'):
    return '.4f', '.4f'
  if key.endswith('_e6'):
    return '.2f', '.2f'
  if key in ('fa', 'fa_pixel'):
    return '.3e', '.3e'
  if key == 'best_epoch' or key.startswith('num_'):
    return '.1f', '.0f'
  return '.4g', '.4g'


def markdown_table(agg: dict) -> str:
  rows = ['| test metric | mean ± std | min | max | n |', '|---|---|---|---|---|']
  items = list(agg['test'].items())
  items.insert(len([k for k in agg['test'] if k in HEADLINE]), ('best_epoch', agg['best_epoch']))
  for key, s in items:
    spec, spec_range = _spec(key)
    if s['std'] is None:  # one value: the mean is that value
      spec = spec_range
    rows.append(f'| {key} | {mean_std(s, spec)} | {_num(s["min"], spec_range)} | '
                f'{_num(s["max"], spec_range)} | {s["n"]} |')
  return '\n'.join(rows)


PROTOCOLS = (
    ('val-selected: best validation mIoU, tested once (limijax)', 'val'),
    ('best test epoch: chosen on test, as most papers report', 'test'),
)


def protocols_table(agg: dict) -> str | None:
  """Test metrics under both protocols side by side, percentages as papers print them;
  None unless every run tracked its test split (``track_test``)."""
  if agg['best_test_epoch'] is None:
    return None
  rows = ['| protocol | mIoU (%) | nIoU (%) | Pd (%) | Fa (x1e-6) | epoch | n |',
          '|---|---|---|---|---|---|---|']
  for label, which in PROTOCOLS:
    test, epoch = ((agg['test'], agg['best_epoch']) if which == 'val' else
                   (agg['best_test_epoch']['test'], agg['best_test_epoch']['epoch']))
    cells = [mean_std(test.get(k, stats([])), '.2f', scale, agg['n'])
             for k, scale in (('miou', 100), ('niou', 100), ('pd', 100), ('fa_e6', 1))]
    rows.append(f'| {label} | {" | ".join(cells)} | {mean_std(epoch, ".1f")} | {agg["n"]} |')
  return '\n'.join(rows)


def runs_table(agg: dict) -> str:
  tracked = agg['best_test_epoch'] is not None
  rows = ['| run | seed | best epoch | test |' + (' best test epoch | its test |' * tracked),
          '|---|---|---|---|' + '---|---|' * tracked]
  keys = ('miou', 'niou', 'pd', 'fa_e6')
  for r in agg['_runs']:
    t = r['results']['test']
    line = format_metrics({k: t.get(k) for k in keys})
    row = f'| {r["path"]} | {r["seed"]} | {r["results"].get("best_epoch")} | {line} |'
    if tracked:
      b = r['results']['best_test_epoch']
      row += f' {b["epoch"]} | {format_metrics({k: b["test"].get(k) for k in keys})} |'
    rows.append(row)
  return '\n'.join(rows)


def plot_val_curves(agg: dict, path: str) -> int:
  """Every run's validation mIoU against epoch, one line per seed; returns the number of
  runs that had a curve to draw."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.4, 4), dpi=100)
  ax = fig.subplots()
  drawn = 0
  for r in agg['_runs']:
    curve = _val_curve(r['path'])
    if curve:
      ax.plot(*zip(*curve), marker='.', lw=1, label=f'seed {r["seed"]}')
      drawn += 1
  ax.set(title=f'validation mIoU, {agg["n"]} runs under {os.path.basename(os.path.abspath(agg["root"]))}',
         xlabel='epoch', ylabel='mIoU', ylim=(0, 1))
  if drawn:
    ax.legend(loc='lower right', fontsize='small')
  fig.tight_layout()
  try:
    fig.savefig(path)
  except OSError as e:
    raise UserError(f'cannot write {path}: {e}') from None
  return drawn


def _public(agg: dict) -> dict:
  return {k: v for k, v in agg.items() if not k.startswith('_')}


def report_skipped(skipped: list[str]) -> None:
  if skipped:
    print(f'skipped {len(skipped)} unfinished run(s) (config.json, no results.json): '
          f'{", ".join(skipped)}', file=sys.stderr, flush=True)


def aggregate_main(root: str) -> dict:
  agg = collect(root)
  report_skipped(agg['skipped'])
  seeds = agg['seeds']
  repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
  if repeated:
    print(f'warning: seed {", ".join(map(str, repeated))} appears in more than one run',
          file=sys.stderr, flush=True)
  print(f'{agg["n"]} finished run(s) under {root}, seeds {", ".join(map(str, seeds))}')
  print()
  print(runs_table(agg))
  print()
  print(markdown_table(agg))
  print()
  both = protocols_table(agg)
  if both:
    print('Test metrics under the two protocols (mean ± std over seeds):')
    print()
    print(both)
    print()
  elif agg['untracked'] and len(agg['untracked']) < agg['n']:
    print(f'best test epoch not reported: {len(agg["untracked"])} run(s) without '
          f'track_test, e.g. {agg["untracked"][0]}')
    print()
  print('std: sample standard deviation (n - 1), the mean alone when n = 1; a null value '
        '(pd of a test set without targets) is left out of its n.')
  plot = os.path.join(root, PLOT_NAME)
  drawn = plot_val_curves(agg, plot)
  print(f'wrote {plot} (validation mIoU per epoch of {drawn} run(s))')
  print(json.dumps(_public(agg)))
  return agg


# --------------------------------------------------------------------------- command
def _define_flags() -> None:
  # Only when run as a command: importing this module defines no flags.
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_bool('json', False, 'Accepted for symmetry with the other commands: the '
                    'JSON line ends the output in any case.')
  flags.DEFINE_bool('table2', False, 'Print the paper\'s Table 2 from ROOT/<variant>/ '
                    '(ours, no_its, no_ses, no_lmb, no_huf, no_c2f, no_c2f_hard).')
  flags.DEFINE_bool('intervals', False, 'With --table2: each row\'s difference from Ours '
                    'with a paired bootstrap 95 % interval over the test images (needs each '
                    'run\'s best checkpoint, or the per-image sums that compare keeps).')


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  args = argv[1:]
  if len(args) != 1:
    raise UserError('usage: python -m limijax.aggregate ROOT [--json] | '
                    'python -m limijax.aggregate --table2 ROOT'
                    + (f' (got {len(args)} arguments)' if args else ''))
  if flags.FLAGS.intervals and not flags.FLAGS.table2:
    raise UserError('--intervals goes with --table2')
  if flags.FLAGS.table2:
    # Imported here: limijax.table2 imports this module.
    from limijax import table2  # pylint: disable=g-import-not-at-top
    table2.print_table(args[0], intervals=flags.FLAGS.intervals)
  else:
    aggregate_main(args[0])


if __name__ == '__main__':
  _define_flags()
  run(main, positional=True)
