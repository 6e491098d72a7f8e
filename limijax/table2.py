"""The paper's Table 2 (ablations): ``python -m limijax.aggregate --table2 ROOT [--intervals]``.

Each row of the paper's Table 2 is a folder under ROOT holding the seeds of one config
(``launch/table2.sh`` writes them): ``ours``, ``no_its``, ``no_ses``, ``no_lmb``,
``no_huf``, ``no_c2f`` and ``no_c2f_hard`` (a reading of "w/o C2F" that is not a row of the
paper). ``launch/choices.sh`` trains three of these configs under its own names
(:data:`CHOICES_NAMES`); a row is read from either folder, and refused when both hold
finished runs. Each row is aggregated over its seeds as :func:`limijax.aggregate.collect`
does, and printed as mean ± sample std of the test metrics, the paper's percentages.
``--intervals`` adds each row's difference from Ours with a paired bootstrap 95 % interval
over the test images (:mod:`limijax.compare`).

This module only reads and prints; the command and its flags are ``limijax.aggregate``'s.
"""

from __future__ import annotations

import json
import os
import sys

from limijax.aggregate import collect, find_runs, is_number, mean_std, report_skipped, stats
from limijax.defaults import diff_keys
from limijax.errors import UserError

# In the paper's row order: (row label, folder under ROOT, the change from Ours as flags).
ROWS = (
    ('Ours', 'ours', ''),
    ('w/o ITS', 'no_its', '--config.data.its.enabled=False'),
    ('w/o SES', 'no_ses', '--config.model.stem=dsconv_bn'),
    ('w/o LMB', 'no_lmb', '--config.model.block=residual'),
    ('w/o HUF', 'no_huf', '--config.model.upsampler=bilinear'),
    ('w/o C2F', 'no_c2f', '--config.model.head=fpn'),
    # Not a row of the paper: its "plain FPN" may also mean side heads kept with hard
    # labels (every alpha 0, weights 1), deep supervision without label smoothing.
    ('w/o C2F, hard side labels', 'no_c2f_hard', '--config.loss.side_alphas=(0.0,0.0,0.0,0.0)'),
)
# launch/choices.sh's folders for the same configs: a row is read from either.
CHOICES_NAMES = {'ours': 'default', 'no_its': 'its_off', 'no_c2f_hard': 'c2f_hard'}
# The metrics shown and the factor each is printed with (percentages as the paper prints
# them; false-alarm components per megapixel beside its pixel rate).
METRICS = (('miou', 100), ('niou', 100), ('pd', 100), ('fa_e6', 1), ('fa_per_mp', 1))


def row_folders(root: str, name: str) -> list[str]:
  """The folders a row may be read from: its own, then its launch/choices.sh name."""
  return [os.path.join(root, n) for n in (name, CHOICES_NAMES.get(name)) if n]


def table(root: str) -> dict:
  """The table from ``root/<row folder>/...``: a markdown table and its data."""
  if not os.path.isdir(root):
    raise UserError(f'{root} is not a folder')
  rows, skipped, missing = [], [], []
  for label, name, _ in ROWS:
    candidates = row_folders(root, name)
    found = [f for f in candidates if os.path.isdir(f) and find_runs(f)[0]]
    if len(found) > 1:
      raise UserError(f'{label} has finished runs in both {found[0]} and {found[1]}: keep one')
    folder = found[0] if found else candidates[0]
    row = {'variant': label, 'folder': folder, 'n': 0}
    if found:
      agg = collect(folder)
      skipped += agg['skipped']
      row.update(n=agg['n'], seeds=agg['seeds'], config=agg['config'], params=agg['params'],
                 **{k: agg['test'].get(k, stats([])) for k, _ in METRICS})
    else:
      missing.append(' or '.join(candidates))
    rows.append(row)
  if len(missing) == len(ROWS):
    raise UserError(f'no finished run under any of {", ".join(missing)}')
  report_skipped(skipped)
  if missing:
    print(f'no finished run under {", ".join(missing)}: row(s) left empty',
          file=sys.stderr, flush=True)
  ours = rows[0].get('config')
  for row in rows:
    if 'config' in row and ours is not None:
      row['differs_from_ours'] = diff_keys(ours, row['config'])
  lines = ['| Method | mIoU (%) | nIoU (%) | Pd (%) | Fa (x1e-6) | FA/MP | Params (M) | seeds |',
           '|---|---|---|---|---|---|---|---|']
  for row in rows:
    if not row['n']:
      lines.append(f'| {row["variant"]} | — | — | — | — | — | — | 0 |')
      continue
    p = row['params']
    p = p['mean'] if isinstance(p, dict) else p  # differing counts (not one config): mean
    params = f'{p / 1e6:.3f}' if is_number(p) else 'n/a'
    cells = [mean_std(row[k], '.2f', scale, row['n']) for k, scale in METRICS]
    lines.append(f'| {row["variant"]} | {" | ".join(cells)} | {params} | {row["n"]} |')
  return {'root': root, 'rows': rows, 'markdown': '\n'.join(lines)}


def against_ours(rows: list[dict]) -> list[str]:
  """Footnote lines: each row's difference from "Ours" with its 95 % interval by a paired
  bootstrap over the test images (:mod:`limijax.compare`; each run's per-image sums are
  read from its ``analysis/`` cache, or computed from its best checkpoint and kept), and
  whether it exceeds both that interval and the seed spread. Fills ``row['vs_ours']``."""
  from limijax import compare  # pylint: disable=g-import-not-at-top
  ours = rows[0]
  if not ours['n']:
    return ['no interval against Ours: its row has no finished run']
  scales, word = dict(METRICS), compare.VERDICT_WORDS
  lines = []
  for row in rows[1:]:
    if not row['n']:
      continue
    variant, base = compare.load_sides(row['folder'], ours['folder'], 'test')
    report = compare.compare_stats(variant, base)
    row['vs_ours'] = report['metrics']
    cells = []
    for key, label, _, _ in compare.METRICS:
      m = report['metrics'][key]
      if m['diff'] is None or m['ci'][0] is None:
        cells.append(f'{label} n/a')
        continue
      scale = scales[key]
      cells.append(f'{label} {m["diff"] * scale:+.2f} [{m["ci"][0] * scale:+.2f}, '
                   f'{m["ci"][1] * scale:+.2f}] (beyond test / seeds: '
                   f'{word[m["beyond_test"]]} / {word[m["beyond_seeds"]]})')
    lines.append(f'{row["variant"]} - Ours: ' + '; '.join(cells))
  return lines


def print_table(root: str, intervals: bool = False) -> dict:
  """What ``aggregate --table2`` prints: the table, the config keys each row changes, the
  intervals when asked, and one JSON line last. The intervals are worked out before the
  first line is printed, so the lines that name where each run's per-image sums come from
  (stderr) do not fall between the table's lines in a terminal."""
  t = table(root)
  differences = against_ours(t['rows']) if intervals else []
  print(f'Table 2 (ablations) from {root}: test metrics, mean ± sample std over seeds')
  print()
  print(t['markdown'])
  print()
  notes = [f'{r["variant"]}: {", ".join(r["differs_from_ours"]) or "nothing"}'
           for r in t['rows'][1:] if 'differs_from_ours' in r]
  if notes:
    print('config keys that differ from Ours: ' + '; '.join(notes))
  if intervals:
    print('differences from Ours (mIoU, nIoU, Pd in points, Fa in 1e-6) with 95 % intervals '
          'of a paired bootstrap over the test images (docs/compare.md):')
    for line in differences:
      print(f'  {line}')
  print(json.dumps({'root': root, 'rows': t['rows']}))
  return t
