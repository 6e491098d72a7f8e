r"""Is run A really better than run B? ``python -m limijax.compare RUN_A RUN_B``.

Each side is a run folder or a folder of seed runs (found as :mod:`limijax.aggregate`
finds them). The comparison is *paired*: both sides are scored on the same images, and a
resampled test set is resampled for both at once. Options: ``--split=test|val``,
``--resamples=2000`` (at least), ``--seed=0``, ``--metric`` (of the verdict), ``--json``.

Per-image statistics: the sums of :class:`limijax.metrics.MetricAccumulator` for one image
(:data:`FIELDS`) and which of its targets were detected; summed over images in order they
give exactly the set's metrics. Computed once per run (:func:`limijax.evaluation.
split_logits`), kept in ``RUN/analysis/per_image_<split>.json``, computed again when the
best checkpoint is newer than that file or the run's ``data`` config changed.

For each metric (mIoU, nIoU, Pd, Fa in 1e-6):

* a side's value is the mean over its seeds of each seed's metric on the whole split;
* the 95 % interval of A - B is a percentile bootstrap over images: a round draws N images
  with replacement (a row of an (R, N) count matrix, seeded), *the same for both sides and
  every seed*; each seed's metric comes from its count-weighted sums, a side's value is
  the mean over its seeds, the round gives A - B. Rounds without a target (Pd undefined)
  are dropped from Pd's interval and counted;
* seed spread: the sample std over a side's seeds, and the standard error of the
  difference of seed means ``sqrt(sA^2/nA + sB^2/nB)``; with several seeds on one side
  only, its std stands in for the other's (``s sqrt(1/nA + 1/nB)``); unknown otherwise.

Verdict: A - B is *beyond the test-set uncertainty* when its interval excludes 0, *beyond
the seed uncertainty* when ``|A - B| > 2 x`` that standard error; only beyond both does
one run count as better (docs/compare.md). Process set-up: as every command that runs
the model, it adds an XLA flag and asks for huge pages first (:mod:`limijax.process`).
"""

from __future__ import annotations

if __name__ == '__main__':  # a command: process set-up before JAX starts (limijax.process)
  from limijax import process as _process
  _process.set_up_command()

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from typing import Sequence

import numpy as np

from limijax import metrics as metrics_lib
from limijax.errors import UserError

# One image's sums, as MetricAccumulator holds them.
FIELDS = metrics_lib.MetricAccumulator.SUMS
_FLOAT_FIELDS = ('niou_sum', 'niou_nonempty_sum')
# Compared metrics: (key, label, format, higher is better).
METRICS = (('miou', 'mIoU', '.4f', True), ('niou', 'nIoU', '.4f', True),
           ('pd', 'Pd', '.4f', True), ('fa_e6', 'Fa x1e-6', '.2f', False),
           ('fa_per_mp', 'FA/MP', '.2f', False))
_ALIASES = {'fa': 'fa_e6'}  # the name format_metrics uses for Fa
# A verdict in words: beyond the interval (or the seed spread), not beyond, unknown.
VERDICT_WORDS = {True: 'yes', False: 'no', None: 'n/a'}
RESAMPLES = 2000
LEVEL = 0.95
CACHE_VERSION = 1
_CHUNK = 256  # bootstrap rounds drawn and summed at a time (bounds the memory of counts)


@dataclasses.dataclass
class ImageStats:
  """One run's per-image statistics on a split, in the split's image order.

  ``sums``: (N, len(FIELDS)) float64, one image's accumulator sums per row (integers are
  exact in float64 far beyond any test set). ``hits[i]``: per target of image i, in label
  order, 1 when it was detected. ``digests``: a hash of each image and its mask, so that
  two runs whose ids agree but whose pixels do not are told apart.
  """
  ids: list[str]
  digests: list[str]
  sums: np.ndarray
  hits: list[list[int]]
  run: str = ''

  def reordered(self, ids: Sequence[str]) -> ImageStats:
    where = {i: k for k, i in enumerate(self.ids)}
    order = [where[i] for i in ids]
    return ImageStats(list(ids), [self.digests[k] for k in order], self.sums[order],
                      [self.hits[k] for k in order], self.run)


def image_digest(image, mask) -> str:
  """A short hash of an image's pixels and mask (shape included)."""
  h = hashlib.sha1()
  for a in (np.ascontiguousarray(image), np.ascontiguousarray(mask, bool)):
    h.update(repr((a.shape, a.dtype.str)).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def image_stats(records, run: str = '') -> ImageStats:
  """Per-image statistics of :func:`limijax.evaluation.split_logits`'s records: each image
  scored alone by ``MetricAccumulator.update`` (the matching is never re-implemented)."""
  ids, digests, rows, hits = [], [], [], []
  for r in records:
    pred, gt = metrics_lib.binarize_logits(r['logits']), np.asarray(r['mask'], bool)
    one = metrics_lib.MetricAccumulator()
    one.update(pred, gt)
    match = metrics_lib.match_components(pred, gt, one.distance_threshold)
    hit = [int(m >= 0) for m in match.gt_match]
    assert sum(hit) == one.num_matched_targets, 'one matching, two answers'
    ids.append(str(r['id']))
    digests.append(image_digest(r['image'], gt))
    rows.append([getattr(one, f) for f in FIELDS])
    hits.append(hit)
  return ImageStats(ids, digests, np.array(rows, np.float64).reshape(-1, len(FIELDS)),
                    hits, run)


def accumulate(stats: ImageStats) -> metrics_lib.MetricAccumulator:
  """The whole set's accumulator from its per-image sums, added in image order as
  evaluation adds them, so ``accumulate(s).result()`` is exactly the set's metrics."""
  acc = metrics_lib.MetricAccumulator()
  for row in stats.sums:
    for f, v in zip(FIELDS, row):
      setattr(acc, f, getattr(acc, f) + (float(v) if f in _FLOAT_FIELDS else int(v)))
  return acc


def metric_of_totals(totals: np.ndarray, metric: str) -> np.ndarray:
  """``metric`` of sums ``(..., len(FIELDS))``, over any leading axes, as
  ``MetricAccumulator.result`` defines it; Pd without a target is NaN."""
  col = {f: totals[..., k] for k, f in enumerate(FIELDS)}

  def ratio(num, den, empty):
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), empty)

  if metric == 'miou':
    return ratio(col['intersection'], col['union'], 0.0)
  if metric == 'niou':
    return ratio(col['niou_sum'], col['num_images'], 0.0)
  if metric == 'pd':
    return ratio(col['num_matched_targets'], col['num_targets'], np.nan)
  if metric == 'fa_e6':
    return ratio(col['num_false_alarm_pixels'], col['num_pixels'], 0.0) * 1e6
  if metric == 'fa_per_mp':
    return ratio(col['num_false_alarm_components'], col['num_pixels'], 0.0) * 1e6
  raise ValueError(f'unknown metric {metric!r}; expected one of {[m[0] for m in METRICS]}')


def _as_seeds(side) -> list[ImageStats]:
  return list(side) if isinstance(side, (list, tuple)) else [side]


def resample_counts(rng: np.random.Generator, n: int, rounds: int) -> np.ndarray:
  """(rounds, n) float64: how often each of n images is drawn in each round of n draws
  with replacement."""
  idx = rng.integers(0, n, size=(rounds, n)) + n * np.arange(rounds)[:, None]
  return np.bincount(idx.ravel(), minlength=rounds * n).reshape(rounds, n).astype(np.float64)


def bootstrap_differences(side_a, side_b, metrics: Sequence[str] = ('miou',),
                          resamples: int = RESAMPLES, seed: int = 0) -> dict[str, np.ndarray]:
  """``{metric: (resamples,) A - B}`` of a paired bootstrap over images (module docstring).

  ``side_a`` / ``side_b``: one :class:`ImageStats` or a list of them (seeds), all on the
  same images in the same order. The counts of a round are drawn once, whatever the
  metrics asked for, so an interval does not depend on which others were computed."""
  a, b = _as_seeds(side_a), _as_seeds(side_b)
  n = len(a[0].ids)
  if resamples < 1 or n < 1:
    raise ValueError(f'need at least one image and one resample, got {n} and {resamples}')
  if any(s.ids != a[0].ids or s.digests != a[0].digests for s in a + b):
    raise ValueError('every run of a paired bootstrap must hold the same images in order')
  sums = np.stack([s.sums for s in a + b])  # (seeds, N, k)
  rng = np.random.default_rng(seed)
  out = {m: [] for m in metrics}
  for start in range(0, resamples, _CHUNK):
    counts = resample_counts(rng, n, min(_CHUNK, resamples - start))
    totals = np.matmul(counts, sums)  # (seeds, rounds, k)
    for m in metrics:
      values = metric_of_totals(totals, m)
      out[m].append(values[:len(a)].mean(axis=0) - values[len(a):].mean(axis=0))
  return {m: np.concatenate(v) for m, v in out.items()}


def interval(diffs: np.ndarray, level: float = LEVEL) -> tuple:
  """(low, high, dropped): the percentile interval of the finite differences (None when
  there is none), and how many rounds were not finite (Pd of a resample without a target)."""
  finite = diffs[np.isfinite(diffs)]
  if not finite.size:
    return None, None, int(diffs.size)
  tail = 50.0 * (1.0 - level)
  low, high = np.percentile(finite, [tail, 100.0 - tail])
  return float(low), float(high), int(diffs.size - finite.size)


def paired_interval(stats_a, stats_b, metric: str = 'miou', resamples: int = RESAMPLES,
                    seed: int = 0, level: float = LEVEL) -> dict:
  """A - B of ``metric`` (a side's value: mean over its seeds) and its bootstrap interval:
  ``{'metric', 'diff', 'low', 'high', 'dropped', 'resamples', 'seed', 'level'}``; 'diff'
  is None when a side has no value (Pd without targets)."""
  a, b, metric = _as_seeds(stats_a), _as_seeds(stats_b), _ALIASES.get(metric, metric)
  values = [_mean([accumulate(s).result()[metric] for s in side]) for side in (a, b)]
  diffs = bootstrap_differences(a, b, (metric,), resamples, seed)[metric]
  low, high, dropped = interval(diffs, level)
  diff = None if None in values else values[0] - values[1]
  return {'metric': metric, 'diff': diff, 'low': low, 'high': high, 'dropped': dropped,
          'resamples': resamples, 'seed': seed, 'level': level}


def _mean(values: list) -> float | None:
  """A side's value: the mean of its seeds' values (None when one has none)."""
  return None if None in values else math.fsum(values) / len(values)


def _std(values: list) -> float | None:
  if len(values) < 2 or None in values:
    return None
  mean = math.fsum(values) / len(values)
  return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def seed_error(std_a, n_a: int, std_b, n_b: int) -> float | None:
  """Standard error of the difference of seed means (module docstring), or None."""
  if std_a is not None and std_b is not None:
    return math.sqrt(std_a ** 2 / n_a + std_b ** 2 / n_b)
  known = std_a if std_a is not None else std_b
  return None if known is None else known * math.sqrt(1 / n_a + 1 / n_b)


def compare_stats(side_a, side_b, resamples: int = RESAMPLES, seed: int = 0,
                  level: float = LEVEL) -> dict:
  """Every metric's row (side values, A - B, interval, seed spread, verdict flags) and
  the per-target tally; the rounds are shared by all metrics."""
  a, b = _as_seeds(side_a), _as_seeds(side_b)
  start = time.perf_counter()
  diffs = bootstrap_differences(a, b, [m[0] for m in METRICS], resamples, seed)
  seconds = time.perf_counter() - start
  rows, results = {}, [[accumulate(s).result() for s in side] for side in (a, b)]
  for key, _, _, _ in METRICS:
    seeds_a, seeds_b = ([r[key] for r in side] for side in results)
    va, vb, std_a, std_b = _mean(seeds_a), _mean(seeds_b), _std(seeds_a), _std(seeds_b)
    low, high, dropped = interval(diffs[key], level)
    se = seed_error(std_a, len(a), std_b, len(b))
    diff = None if va is None or vb is None else va - vb
    rows[key] = {
        'a': va, 'b': vb, 'diff': diff, 'ci': [low, high], 'dropped': dropped,
        'seed_std_a': std_a, 'seed_std_b': std_b, 'seed_se': se,
        'beyond_test': None if diff is None or low is None else bool(low > 0 or high < 0),
        'beyond_seeds': None if diff is None or se is None else bool(abs(diff) > 2 * se)}
  rate = [np.mean([np.concatenate([np.asarray(h, float) for h in s.hits] or [np.zeros(0)])
                   for s in side], axis=0) for side in (a, b)]
  return {'num_images': len(a[0].ids), 'seeds_a': len(a), 'seeds_b': len(b),
          'resamples': resamples, 'seed': seed, 'level': level, 'bootstrap_s': seconds,
          'metrics': rows,
          'targets': {'num_targets': int(rate[0].size),
                      'detected_more_by_a': int(np.sum(rate[0] > rate[1])),
                      'detected_more_by_b': int(np.sum(rate[1] > rate[0]))}}


def verdict(report: dict, metric: str = 'miou') -> str:
  """The one line that says whether A - B of ``metric`` exceeds both uncertainties."""
  key, label, spec, higher = next(m for m in METRICS if m[0] == _ALIASES.get(metric, metric))
  row, pct = report['metrics'][key], f'{100 * report["level"]:g}%'
  if row['diff'] is None or row['ci'][0] is None:
    return f'verdict ({label}): no value on one side (no target in the split)'
  lo, hi = row['ci']
  test = (f'the test-set uncertainty ({pct} CI [{lo:+{spec}}, {hi:+{spec}}] '
          f'{"excludes" if row["beyond_test"] else "includes"} 0)')
  seeds = ('the seed uncertainty (unknown: one seed per side)' if row['seed_se'] is None
           else f'the seed uncertainty (2 x seed SE = {2 * row["seed_se"]:{spec}})')
  head = f'verdict ({label}): A - B = {row["diff"]:+{spec}}'
  if row['beyond_test'] and row['beyond_seeds']:
    better = 'A' if (row['diff'] > 0) == higher else 'B'
    return f'{head} exceeds both {test} and {seeds}: {better} is better'
  if not row['beyond_test'] and not row['beyond_seeds']:
    return f'{head} exceeds neither {test} nor {seeds}: no difference shown'
  if row['beyond_test']:
    why = 'train more seeds to tell' if row['seed_se'] is None else 'seed noise could explain it'
    return f'{head} exceeds {test} but not {seeds}: not established, {why}'
  return f'{head} exceeds {seeds} but not {test}: not established, the test set is too small'


# --------------------------------------------------------------------------- cache
def cache_path(run: str, split: str) -> str:
  return os.path.join(run, 'analysis', f'per_image_{split}.json')


def _checkpoint_time(run: str) -> float:
  """The newest modification time under the run's best checkpoint (0 if none)."""
  best = os.path.join(run, 'checkpoints', 'best')
  paths = [p for d, _, fs in os.walk(best) for p in (d, *(os.path.join(d, f) for f in fs))]
  return max(map(os.path.getmtime, paths), default=0.0)


def _data_config(run: str) -> dict:
  try:
    with open(os.path.join(run, 'config.json')) as f:
      return json.load(f).get('data', {})
  except (OSError, ValueError, AttributeError):
    raise UserError(f'{run}/config.json is unreadable: not a limijax run') from None


def write_cache(run: str, split: str, stats: ImageStats) -> str:
  """Keep ``stats`` as the run's per-image statistics of ``split``; returns the path."""
  path = cache_path(run, split)
  columns = {f: [float(v) if f in _FLOAT_FIELDS else int(v) for v in stats.sums[:, k]]
             for k, f in enumerate(FIELDS)}
  record = {'version': CACHE_VERSION, 'split': split, 'data': _data_config(run),
            'ids': stats.ids, 'digests': stats.digests, 'hits': stats.hits, 'sums': columns,
            'metrics': accumulate(stats).result()}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f)
  os.replace(path + '.tmp', path)
  return path


def read_cache(run: str, split: str) -> ImageStats | None:
  """The run's kept per-image statistics, or None when there are none or they are stale
  (older than the best checkpoint, another data config, another format)."""
  path = cache_path(run, split)
  try:
    if os.path.getmtime(path) < _checkpoint_time(run):
      return None
    with open(path) as f:
      r = json.load(f)
    if (r.get('version') != CACHE_VERSION or r.get('split') != split
        or r.get('data') != _data_config(run)):
      return None
    sums = np.array([r['sums'][f] for f in FIELDS], np.float64).T.reshape(-1, len(FIELDS))
    if not len(r['ids']) == len(r['digests']) == len(r['hits']) == len(sums):
      return None
    return ImageStats([str(i) for i in r['ids']], list(r['digests']), sums,
                      [list(h) for h in r['hits']], run)
  except (OSError, ValueError, KeyError, TypeError):
    return None


# --------------------------------------------------------------------------- runs
def side_runs(path: str, split: str = 'test') -> list[str]:
  """The run folders of one side: a run, or the seed runs under a folder (one config).
  Each needs its best checkpoint, or its kept per-image statistics of ``split`` (so that
  runs copied without their checkpoints, e.g. committed results, still compare)."""
  from limijax import aggregate  # pylint: disable=g-import-not-at-top
  from limijax.workdir import has_checkpoint  # pylint: disable=g-import-not-at-top
  runs = aggregate.collect(path)['runs']  # UserError: no run, or runs of several configs
  for run in runs:
    if not has_checkpoint(run, ('best',)) and read_cache(run, split) is None:
      raise UserError(f'{run} holds no best checkpoint (checkpoints/best) and no per-image '
                      f'statistics of its {split} split ({cache_path(run, split)})')
  return runs


def split_images(run: str, split: str) -> tuple[list[str], list[str]]:
  """(ids, digests) of the run's ``split`` as its config makes it, without inference."""
  from limijax import data as data_lib  # pylint: disable=g-import-not-at-top
  from limijax import input_pipeline  # pylint: disable=g-import-not-at-top
  from limijax.workdir import load_config  # pylint: disable=g-import-not-at-top
  source = getattr(data_lib.load_dataset(load_config(run).data), split)
  ids, digests = [], []
  for i in range(len(source)):
    r = source[i]
    ids.append(str(r.get('id', i)))
    digests.append(image_digest(input_pipeline.plane(r['image']),
                                input_pipeline.plane(r['mask']) > 0))
  return ids, digests


def check_same_images(named: list[tuple[str, list[str], list[str]]], split: str) -> None:
  """Refuse runs not scored on the same images (ids and pixels; the order may differ):
  ``named`` is (run, ids, digests) per run; the message names one differing image."""
  for run, ids, _ in named:
    if len(set(ids)) != len(ids):
      twice = next(i for i in ids if ids.count(i) > 1)
      raise UserError(f'image {twice!r} appears twice in the {split} split of {run}')
  ref_run, ref_ids, ref_digests = named[0]
  ref = dict(zip(ref_ids, ref_digests))
  for run, ids, digests in named[1:]:
    other = dict(zip(ids, digests))
    for a, b, mine, theirs in ((ref_run, run, ref_ids, other), (run, ref_run, ids, ref)):
      missing = next((i for i in mine if i not in theirs), None)
      if missing is not None:
        raise UserError(f'{a} and {b} are not scored on the same {split} images: image '
                        f'{missing!r} of {a} is not in the {split} split of {b}')
    changed = next((i for i in ref_ids if ref[i] != other[i]), None)
    if changed is not None:
      raise UserError(f'{ref_run} and {run} are not scored on the same {split} images: '
                      f'image {changed!r} has other pixels or another mask in {run}')


def compute_stats(run: str, split: str) -> ImageStats:
  """Inference of the run's best checkpoint, scored per image and checked against the
  split's metrics as evaluation gives them."""
  from limijax import evaluation  # pylint: disable=g-import-not-at-top
  records, whole = evaluation.split_logits(run, split)
  stats = image_stats(records, run)
  if accumulate(stats).result() != whole:
    raise RuntimeError(f'per-image sums of {run} do not give its {split} metrics')
  return stats


def load_sides(path_a: str, path_b: str, split: str) -> tuple[list, list]:
  """Both sides' per-image statistics, in one image order; images are checked first, so
  runs on different images are refused before any inference or cache is written."""
  sides = [side_runs(path_a, split), side_runs(path_b, split)]
  runs = list(dict.fromkeys(os.path.realpath(r) for side in sides for r in side))
  cached = {r: read_cache(r, split) for r in runs}
  images = {r: (s.ids, s.digests) if s is not None else split_images(r, split)
            for r, s in cached.items()}
  check_same_images([(r, *images[r]) for r in runs], split)
  stats = {}
  for r in runs:
    if cached[r] is not None:
      print(f'{r}: per-image statistics from {cache_path(r, split)}', file=sys.stderr)
      stats[r] = cached[r]
      continue
    stats[r] = compute_stats(r, split)
    if (stats[r].ids, stats[r].digests) != images[r]:
      raise UserError(f'the {split} split of {r} changed while it was scored')
    try:
      print(f'{r}: wrote {write_cache(r, split, stats[r])}', file=sys.stderr)
    except OSError as e:
      print(f'{r}: per-image statistics not kept ({e})', file=sys.stderr)
  order = stats[runs[0]].ids
  return tuple([stats[os.path.realpath(r)].reordered(order) for r in side] for side in sides)


# --------------------------------------------------------------------------- printing
def _cell(v, spec: str, sign: str = '') -> str:
  return 'n/a' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:{sign}{spec}}'


def table(report: dict) -> str:
  """The markdown table: metric, A, B, A - B, interval, seed spread, verdict words."""
  pct = f'{100 * report["level"]:g}%'
  lines = [f'| metric | A | B | A - B | {pct} CI of A - B | seed std A | seed std B | '
           '2 x seed SE | beyond test / seeds |', '|---' * 9 + '|']
  for key, label, spec, _ in METRICS:
    r = report['metrics'][key]
    two_se = None if r['seed_se'] is None else 2 * r['seed_se']
    ci = f'[{_cell(r["ci"][0], spec, "+")}, {_cell(r["ci"][1], spec, "+")}]'
    if r['dropped']:
      ci += f' ({r["dropped"]} rounds without a target)'
    lines.append(f'| {label} | {_cell(r["a"], spec)} | {_cell(r["b"], spec)} | '
                 f'{_cell(r["diff"], spec, "+")} | {ci} | {_cell(r["seed_std_a"], spec)} | '
                 f'{_cell(r["seed_std_b"], spec)} | {_cell(two_se, spec)} | '
                 f'{VERDICT_WORDS[r["beyond_test"]]} / {VERDICT_WORDS[r["beyond_seeds"]]} |')
  return '\n'.join(lines)


def _define_flags() -> None:
  # Only when run as a command: importing this module defines no flags.
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum('split', 'test', ['test', 'val'], 'Split both sides are scored on.')
  flags.DEFINE_bool('json', False, 'End the output with one JSON line of every number.')
  flags.DEFINE_integer('resamples', RESAMPLES, 'Bootstrap rounds (at least 2000).')
  flags.DEFINE_integer('seed', 0, 'Seed of the bootstrap\'s draws.')
  flags.DEFINE_enum('metric', 'miou', ['miou', 'niou', 'pd', 'fa'], 'Metric of the verdict.')


def main(argv: Sequence[str]) -> None:  # absl exits with what main returns: nothing
  from absl import flags  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  args = argv[1:]
  if len(args) != 2:
    raise UserError('usage: python -m limijax.compare RUN_A RUN_B [--split=test] [--json] '
                    f'[--resamples={RESAMPLES}] [--seed=0] (got {len(args)} arguments)')
  if FLAGS.resamples < RESAMPLES:
    raise UserError(f'--resamples must be at least {RESAMPLES}, got {FLAGS.resamples}')
  a, b = load_sides(args[0], args[1], FLAGS.split)
  report = compare_stats(a, b, FLAGS.resamples, FLAGS.seed)
  line = verdict(report, FLAGS.metric)
  for name, path, side in (('A', args[0], a), ('B', args[1], b)):
    print(f'{name}: {path} ({len(side)} run(s): {", ".join(s.run for s in side)})')
  t = report['targets']
  print(f'{FLAGS.split} split: {report["num_images"]} images, {t["num_targets"]} targets')
  print()
  print(table(report))
  print()
  print(f'targets detected more often by A: {t["detected_more_by_a"]}, by B: '
        f'{t["detected_more_by_b"]} (of {t["num_targets"]}; detection rate over seeds)')
  print(f'CI: paired percentile bootstrap over the {report["num_images"]} images, '
        f'{report["resamples"]} resamples (seed {report["seed"]}, '
        f'{report["bootstrap_s"]:.2f} s); a side is the mean of its seeds; seed SE: '
        'sqrt(sA^2/nA + sB^2/nB) (docs/compare.md)')
  print(line, flush=True)
  if FLAGS.json:
    print(json.dumps({'a': {'path': args[0], 'runs': [s.run for s in a]},
                      'b': {'path': args[1], 'runs': [s.run for s in b]},
                      'split': FLAGS.split, **report, 'verdict': line}), flush=True)


if __name__ == '__main__':
  from limijax.errors import run as _run
  _define_flags()
  _run(main, positional=True)
