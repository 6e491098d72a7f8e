"""`python -m limijax.aggregate`: statistics over seeds from fabricated run folders whose
numbers are chosen so that every mean and sample std is worked out by hand."""

import contextlib
import io
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from limijax import aggregate, defaults, table2

REPO = pathlib.Path(__file__).resolve().parents[1]

CONFIG = {
    'seed': 0,
    'num_epochs': 4,
    'batch_size': 10,
    'data': {'name': 'irstd1k', 'root': 'datasets/IRSTD-1k', 'its': {'enabled': True}},
    'model': {'stem': 'ses', 'block': 'lmb', 'upsampler': 'huf', 'head': 'c2f',
              'channels': [8, 16, 32, 32]},
    'loss': {'side_alphas': [0.1, 0.05, 0.01, 0.001]},
}


def _metrics(miou, niou, pd, fa_e6, fa_pixel_e6=200.0, num_images=10):
  return {'miou': miou, 'niou': niou, 'niou_nonempty': niou, 'pd': pd, 'fa': fa_e6 * 1e-6,
          'fa_e6': fa_e6, 'fa_pixel': fa_pixel_e6 * 1e-6, 'fa_pixel_e6': fa_pixel_e6,
          'num_images': num_images, 'num_targets': 0 if pd is None else 20,
          'num_matched_targets': 0 if pd is None else round(20 * pd),
          'num_false_alarm_components': 3, 'num_false_alarm_pixels': 30,
          'num_pixels': 655360}


def make_run(folder, seed, test, best_epoch=10, params=16028, config=None, val_curve=(),
             finished=True):
  """A run folder as limijax.main leaves it (config.json, metrics.jsonl, results.json)."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  config = json.loads(json.dumps(config or CONFIG))
  config['seed'] = seed
  (folder / 'config.json').write_text(json.dumps(config, indent=2, sort_keys=True))
  lines = [{'event': 'train', 'step': 1, 'epoch': 1, 'loss': 1.0, 'lr': 1e-3}]
  lines += [{'event': 'val', 'epoch': e, 'step': 10 * e, **_metrics(m, m, 0.9, 100.0)}
            for e, m in val_curve]
  (folder / 'metrics.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
  (folder / 'checkpoints' / 'latest').mkdir(parents=True, exist_ok=True)
  if finished:
    results = {'best_epoch': best_epoch, 'val': test, 'test': test,
               'baselines': {'tophat': {**_metrics(0.3, 0.3, 0.8, 1000.0), 'size': 15, 'k': 5.5,
                                        'val_miou': 0.31}},
               'params': params, 'train_params': params + 440, 'steps': 100}
    (folder / 'results.json').write_text(json.dumps(results))
  return folder


# Three seeds; by hand (sample std, n - 1 = 2):
#   miou 0.60 0.65 0.70 -> mean 0.65, deviations -.05 0 .05, sum sq .005, std sqrt(.0025) = .05
#   niou 0.50 0.50 0.80 -> mean 0.60, deviations -.1 -.1 .2, sum sq .06, std sqrt(.03)
#   pd   0.80 null 0.90 -> n 2, mean 0.85, sum sq .005 / 1, std sqrt(.005)
#   fa_e6 100 130 160   -> mean 130, std sqrt((900 + 0 + 900) / 2) = 30
#   fa_pixel_e6 200 x 3 -> std 0
#   best_epoch 10 20 30 -> mean 20, std 10
SEEDS = [
    (0, _metrics(0.60, 0.50, 0.80, 100.0), 10),
    (1, _metrics(0.65, 0.50, None, 130.0), 20),
    (2, _metrics(0.70, 0.80, 0.90, 160.0), 30),
]


def make_seeds(root, config=None):
  for seed, test, best in SEEDS:
    make_run(pathlib.Path(root) / f'seed_{seed}', seed, test, best, config=config,
             val_curve=[(2, 0.3 + 0.01 * seed), (4, 0.5 + 0.01 * seed)])
  return root


def _cli(*args, cwd=REPO):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  return subprocess.run([sys.executable, '-m', 'limijax.aggregate', *map(str, args)],
                        capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def _close(s, mean, std, lo, hi, n):
  assert s['n'] == n
  assert math.isclose(s['mean'], mean, abs_tol=1e-12)
  assert (s['std'] is None) if std is None else math.isclose(s['std'], std, abs_tol=1e-12)
  assert math.isclose(s['min'], lo) and math.isclose(s['max'], hi)


def test_mean_std_min_max_n_by_hand(tmp_path):
  agg = aggregate.collect(str(make_seeds(tmp_path)))
  t = agg['test']
  _close(t['miou'], 0.65, 0.05, 0.60, 0.70, 3)
  _close(t['niou'], 0.60, math.sqrt(0.03), 0.50, 0.80, 3)
  _close(t['fa_e6'], 130.0, 30.0, 100.0, 160.0, 3)
  _close(t['fa_pixel_e6'], 200.0, 0.0, 200.0, 200.0, 3)
  _close(agg['best_epoch'], 20.0, 10.0, 10, 30, 3)
  assert agg['n'] == 3 and agg['seeds'] == [0, 1, 2] and agg['params'] == 16028
  # the stored config over the defaults: a key added since a run was made reads as its
  # default, so that such a run and a new one are the same experiment
  filled = defaults.fill_defaults(CONFIG)
  assert agg['config'] == {k: v for k, v in filled.items()
                          if k not in ('seed', *aggregate.NOT_THE_EXPERIMENT)}
  assert agg['config']['model']['norm'] == 'group' and 'norm' not in CONFIG['model']
  assert list(t)[:6] == ['miou', 'niou', 'pd', 'fa_e6', 'fa_pixel_e6', 'fa_per_mp']
  # results written before fa_per_mp existed: derived from their counts
  _close(t['fa_per_mp'], 3 / 655360 * 1e6, 0.0, 3 / 655360 * 1e6, 3 / 655360 * 1e6, 3)


def test_null_pd_is_left_out_of_its_n(tmp_path):
  t = aggregate.collect(str(make_seeds(tmp_path)))['test']
  _close(t['pd'], 0.85, math.sqrt(0.005), 0.80, 0.90, 2)
  assert t['num_targets']['n'] == 3  # 0 targets is a number, not a null


def test_one_run_has_no_std_and_all_null_pd_is_na(tmp_path):
  make_run(tmp_path / 'only', 7, _metrics(0.66, 0.62, None, 145.0), 50)
  agg = aggregate.collect(str(tmp_path))
  _close(agg['test']['miou'], 0.66, None, 0.66, 0.66, 1)
  assert agg['test']['pd'] == {'mean': None, 'std': None, 'min': None, 'max': None, 'n': 0}
  table = aggregate.markdown_table(agg)
  assert '| miou | 0.6600 | 0.6600 | 0.6600 | 1 |' in table
  assert '| pd | n/a | n/a | n/a | 0 |' in table
  assert '| best_epoch | 50 | 50 | 50 | 1 |' in table


def test_markdown_cells(tmp_path):
  table = aggregate.markdown_table(aggregate.collect(str(make_seeds(tmp_path))))
  assert '| miou | 0.6500 ± 0.0500 | 0.6000 | 0.7000 | 3 |' in table
  assert '| niou | 0.6000 ± 0.1732 | 0.5000 | 0.8000 | 3 |' in table
  assert '| pd | 0.8500 ± 0.0707 | 0.8000 | 0.9000 | 2 |' in table
  assert '| fa_e6 | 130.00 ± 30.00 | 100.00 | 160.00 | 3 |' in table
  assert '| fa_pixel_e6 | 200.00 ± 0.00 | 200.00 | 200.00 | 3 |' in table
  assert '| best_epoch | 20.0 ± 10.0 | 10 | 30 | 3 |' in table
  assert '| fa | 1.300e-04 ± 3.000e-05 | 1.000e-04 | 1.600e-04 | 3 |' in table


def test_runs_found_at_any_depth_and_unfinished_skipped(tmp_path):
  # A process that trained several seeds (DIR/seed_<k>/) beside seeds.sh's layout, and a
  # parent run folder holding sub-runs: only the sub-runs count.
  make_run(tmp_path / 'a' / 'seed_0', 0, SEEDS[0][1])
  make_run(tmp_path / 'a' / 'seed_10', 10, SEEDS[1][1])
  make_run(tmp_path / 'a' / 'seed_2', 2, SEEDS[2][1])
  parent = make_run(tmp_path / 'b' / 'multi', 3, SEEDS[0][1])
  make_run(parent / 'seed_3', 3, SEEDS[0][1])
  make_run(parent / 'seed_4', 4, SEEDS[0][1], finished=False)
  make_run(tmp_path / 'a' / 'seed_5', 5, SEEDS[0][1], finished=False)
  (tmp_path / 'a' / 'seed_0' / 'checkpoints' / 'latest' / 'config.json').write_text('{}')
  runs, skipped = aggregate.find_runs(str(tmp_path))
  rel = lambda ps: [os.path.relpath(p, tmp_path) for p in ps]  # noqa: E731
  assert rel(runs) == ['a/seed_0', 'a/seed_2', 'a/seed_10', 'b/multi/seed_3']
  assert rel(skipped) == ['a/seed_5', 'b/multi/seed_4']


def test_cli_prints_table_json_last_and_writes_plot(tmp_path):
  root = make_seeds(tmp_path / 'runs')
  make_run(root / 'seed_3', 3, SEEDS[0][1], finished=False)
  proc = _cli(root, '--json')
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout.strip().splitlines()
  result = json.loads(out[-1])
  assert result['n'] == 3 and result['seeds'] == [0, 1, 2]
  assert result['runs'] == [str(root / f'seed_{k}') for k in range(3)]
  assert result['skipped'] == [str(root / 'seed_3')]
  assert math.isclose(result['test']['miou']['std'], 0.05)
  assert result['test']['pd']['n'] == 2
  assert '| miou | 0.6500 ± 0.0500 | 0.6000 | 0.7000 | 3 |' in proc.stdout
  assert f'wrote {root / "aggregate.png"} (validation mIoU per epoch of 3 run(s))' in proc.stdout
  png = (root / 'aggregate.png').read_bytes()
  assert png.startswith(b'\x89PNG') and len(png) > 5000
  err = proc.stderr.strip().splitlines()
  assert len(err) == 1 and 'skipped 1 unfinished' in err[0] and 'seed_3' in err[0]
  # Without --json the JSON line ends the output all the same.
  again = _cli(root)
  assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1]) == result


def test_cli_refuses_mixed_configs_naming_the_key(tmp_path):
  make_seeds(tmp_path)
  other = json.loads(json.dumps(CONFIG))
  other['model']['stem'] = 'dsconv_bn'
  other['num_epochs'] = 5
  make_run(tmp_path / 'seed_9', 9, SEEDS[0][1], config=other)
  proc = _cli(tmp_path)
  assert proc.returncode == 2
  err = proc.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ')
  assert 'model.stem, num_epochs' in err[0]
  assert str(tmp_path / 'seed_0') in err[0] and str(tmp_path / 'seed_9') in err[0]
  assert err[0].endswith('at a time')  # runs side by side: no folder of runs to name
  assert not (tmp_path / 'aggregate.png').exists()


@pytest.mark.parametrize('case', ['empty', 'unfinished_only', 'missing', 'no_argument'])
def test_cli_no_finished_run_is_one_line_exit_2(tmp_path, case):
  args = {'empty': [tmp_path], 'missing': [tmp_path / 'nope'], 'no_argument': [],
          'unfinished_only': [tmp_path]}[case]
  if case == 'unfinished_only':
    make_run(tmp_path / 'seed_0', 0, SEEDS[0][1], finished=False)
  proc = _cli(*args)
  assert proc.returncode == 2, proc.stdout
  err = proc.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: '), proc.stderr
  assert proc.stdout == ''
  if case == 'unfinished_only':
    assert 'no finished run' in err[0] and '1 unfinished' in err[0]


# --------------------------------------------------------------------------- Table 2
# Per variant (folder, miou of its two seeds, params): mIoU mean and std by hand in %.
VARIANTS = {
    'ours': ((0.66, 0.68), 16028, {}),
    'no_its': ((0.60, 0.64), 16028, {'data': {'its': {'enabled': False}}}),
    'no_ses': ((0.61, 0.61), 15950, {'model': {'stem': 'dsconv_bn'}}),
    'no_lmb': ((0.50, 0.70), 30000, {'model': {'block': 'residual'}}),
    'no_huf': ((0.62, 0.63), 15000, {'model': {'upsampler': 'bilinear'}}),
    'no_c2f': ((0.64, 0.65), 16028, {'model': {'head': 'fpn'}}),
    'no_c2f_hard': ((0.65, 0.66), 16028, {'loss': {'side_alphas': [0.0, 0.0, 0.0, 0.0]}}),
}


def _merge(a, b):
  out = json.loads(json.dumps(a))
  for k, v in b.items():
    out[k] = _merge(out[k], v) if isinstance(v, dict) else v
  return out


def make_table2(root, variants=VARIANTS):
  for name, (mious, params, change) in variants.items():
    for seed, miou in enumerate(mious):
      # niou = miou - 0.1; pd .9 / .8 (null for no_huf seed 1); fa 10 / 20.
      pd = None if (name == 'no_huf' and seed == 1) else (0.9, 0.8)[seed]
      make_run(pathlib.Path(root) / name / f'seed_{seed}', seed,
               _metrics(miou, miou - 0.1, pd, (10.0, 20.0)[seed]), params=params,
               config=_merge(CONFIG, change))
  return root


def test_table2_rows_in_paper_order_with_cells(tmp_path):
  t = table2.table(str(make_table2(tmp_path)))
  lines = t['markdown'].splitlines()
  assert lines[0] == ('| Method | mIoU (%) | nIoU (%) | Pd (%) | Fa (x1e-6) | FA/MP '
                      '| Params (M) | seeds |')
  assert [line.split(' | ')[0] for line in lines[2:]] == [
      '| Ours', '| w/o ITS', '| w/o SES', '| w/o LMB', '| w/o HUF', '| w/o C2F',
      '| w/o C2F, hard side labels']
  # Two seeds a, b: mean (a + b) / 2, sample std |a - b| / sqrt 2.
  # Ours: mIoU 66, 68 -> 67.00 ± 1.41; nIoU 56, 58 -> 57.00 ± 1.41; Pd 90, 80 -> 85.00 ± 7.07;
  # Fa 10, 20 -> 15.00 ± 7.07. FA/MP: 3 components in 655,360 pixels, 4.58 per megapixel.
  fa = '15.00 ± 7.07 | 4.58 ± 0.00'
  assert lines[2] == f'| Ours | 67.00 ± 1.41 | 57.00 ± 1.41 | 85.00 ± 7.07 | {fa} | 0.016 | 2 |'
  assert lines[3] == f'| w/o ITS | 62.00 ± 2.83 | 52.00 ± 2.83 | 85.00 ± 7.07 | {fa} | 0.016 | 2 |'
  assert lines[4] == f'| w/o SES | 61.00 ± 0.00 | 51.00 ± 0.00 | 85.00 ± 7.07 | {fa} | 0.016 | 2 |'
  assert lines[5] == f'| w/o LMB | 60.00 ± 14.14 | 50.00 ± 14.14 | 85.00 ± 7.07 | {fa} | 0.030 | 2 |'
  # no_huf's second seed has no Pd: Pd is the first seed's 90 alone, and says so.
  assert lines[6] == f'| w/o HUF | 62.50 ± 0.71 | 52.50 ± 0.71 | 90.00 (n=1) | {fa} | 0.015 | 2 |'
  assert lines[7] == f'| w/o C2F | 64.50 ± 0.71 | 54.50 ± 0.71 | 85.00 ± 7.07 | {fa} | 0.016 | 2 |'
  diffs = {r['variant']: r.get('differs_from_ours') for r in t['rows']}
  assert diffs['w/o ITS'] == ['data.its.enabled'] and diffs['w/o C2F'] == ['model.head']
  assert diffs['w/o C2F, hard side labels'] == ['loss.side_alphas']


def test_table2_reads_rows_from_the_choices_arms_folders(tmp_path):
  # launch/choices.sh trains Ours, w/o ITS and the hard-label row as default, its_off and
  # c2f_hard: the same table comes from those folders.
  expected = table2.table(str(make_table2(tmp_path / 'paper')))
  choices = make_table2(tmp_path / 'choices')
  for name, arm in table2.CHOICES_NAMES.items():
    (choices / name).rename(choices / arm)
  t = table2.table(str(choices))
  assert t['markdown'] == expected['markdown']
  assert [r['folder'] for r in t['rows']][:2] == [str(choices / 'default'),
                                                  str(choices / 'its_off')]
  # Finished runs of one row in both folders: refused, naming both.
  make_table2(choices, {'ours': VARIANTS['ours']})
  with pytest.raises(aggregate.UserError, match=r'Ours has finished runs in both .*ours and '
                     r'.*default'):
    table2.table(str(choices))


def test_plain_aggregate_of_a_choices_root_names_an_arm_and_points_to_table2(tmp_path):
  # Only launch/choices.sh's folder names (default, its_off, c2f_hard): the one-line error
  # names one arm's folder to aggregate, and points to --table2 for the rows.
  make_table2(tmp_path, {k: VARIANTS[k] for k in table2.CHOICES_NAMES})
  for name, arm in table2.CHOICES_NAMES.items():
    (tmp_path / name).rename(tmp_path / arm)
  with pytest.raises(aggregate.UserError, match=r'at a time, e\.g\. .*/(default|its_off|c2f_hard)'
                     r'; for the row folders of launch/table2.sh or launch/choices.sh use '
                     r'--table2$'):
    aggregate.collect(str(tmp_path))


def test_table2_cli_missing_variant_row_left_empty(tmp_path):
  make_table2(tmp_path, {k: v for k, v in VARIANTS.items() if k not in ('no_its', 'no_lmb')})
  proc = _cli('--table2', tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert '| w/o LMB | — | — | — | — | — | — | 0 |' in proc.stdout
  assert '| w/o ITS | — | — | — | — | — | — | 0 |' in proc.stdout
  # One line naming every folder looked in: w/o ITS may also come from choices.sh's its_off.
  assert len(proc.stderr.strip().splitlines()) == 1
  assert f'{tmp_path / "no_its"} or {tmp_path / "its_off"}, {tmp_path / "no_lmb"}' in proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert [r['n'] for r in result['rows']] == [2, 0, 2, 0, 2, 2, 2]
  assert math.isclose(result['rows'][0]['miou']['mean'], 0.67)
  # The plain command on the same ROOT refuses to mix variants and points to --table2.
  plain = _cli(tmp_path)
  assert plain.returncode == 2 and '--table2' in plain.stderr


def test_table2_cli_nothing_at_all_is_one_line_exit_2(tmp_path):
  proc = _cli('--table2', tmp_path)
  assert proc.returncode == 2
  assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith('error: ')


# ------------------------------------------------------------------ the two protocols
def _track(folder, best_test_epoch, test):
  """Adds what a track_test run writes: the epoch with the best test mIoU and its test."""
  path = pathlib.Path(folder) / 'results.json'
  results = json.loads(path.read_text())
  results['best_test_epoch'] = {'epoch': best_test_epoch, 'test': test}
  path.write_text(json.dumps(results))
  config = json.loads((pathlib.Path(folder) / 'config.json').read_text())
  config['track_test'] = True  # may differ from untracked seeds: it changes no training
  (pathlib.Path(folder) / 'config.json').write_text(json.dumps(config))


def test_both_protocols_side_by_side_when_every_run_tracked_test(tmp_path):
  root = make_seeds(tmp_path / 'r')
  # Best test epochs: mIoU 0.70 0.71 0.72 (mean 0.71, std 0.01), epochs 12 14 16.
  for (seed, _, _), m, e in zip(SEEDS, (0.70, 0.71, 0.72), (12, 14, 16)):
    _track(root / f'seed_{seed}', e, _metrics(m, m, 0.95, 50.0))
  agg = aggregate.collect(str(root))
  _close(agg['best_test_epoch']['test']['miou'], 0.71, 0.01, 0.70, 0.72, 3)
  _close(agg['best_test_epoch']['epoch'], 14, 2, 12, 16, 3)
  table = aggregate.protocols_table(agg)
  lines = table.splitlines()
  assert lines[2].startswith('| val-selected') and '| 65.00 ± 5.00 |' in lines[2]
  assert lines[3].startswith('| best test epoch') and '| 71.00 ± 1.00 |' in lines[3]
  assert '| 14.0 ± 2.0 | 3 |' in lines[3]
  proc = _cli(str(root))
  assert proc.returncode == 0, proc.stderr
  assert 'chosen on test, as most papers report' in proc.stdout
  out = json.loads(proc.stdout.splitlines()[-1])
  assert out['best_test_epoch']['test']['miou']['mean'] == pytest.approx(0.71)


def test_one_untracked_run_leaves_the_second_protocol_out(tmp_path):
  root = make_seeds(tmp_path / 'r')
  _track(root / 'seed_0', 12, _metrics(0.7, 0.7, 0.95, 50.0))
  agg = aggregate.collect(str(root))  # configs differ in track_test only: accepted
  assert agg['best_test_epoch'] is None and aggregate.protocols_table(agg) is None
  assert len(agg['untracked']) == 2


def test_table2_intervals_against_ours_from_trained_runs(tmp_path, tiny_run, tiny_two_seeds):
  # Ours: the two seeds of the shared runs; "w/o ITS": the single shared run (seed 1, the
  # same data, so the same test images). Each row's difference from Ours comes with the
  # interval compare gives for the same two sides.
  import shutil  # pylint: disable=g-import-not-at-top
  from limijax import compare  # pylint: disable=g-import-not-at-top
  shutil.copytree(tiny_two_seeds[0], tmp_path / 'ours')
  shutil.copytree(tiny_run[0], tmp_path / 'no_its')
  t = table2.table(str(tmp_path))
  lines = table2.against_ours(t['rows'])
  assert len(lines) == 1 and lines[0].startswith('w/o ITS - Ours: mIoU ')
  got = t['rows'][1]['vs_ours']['miou']
  ours = [r['test']['miou'] for r in tiny_two_seeds[1]['runs']]
  assert got['diff'] == pytest.approx(tiny_run[1]['test']['miou'] - sum(ours) / 2, abs=1e-12)
  sides = compare.load_sides(str(tmp_path / 'no_its'), str(tmp_path / 'ours'), 'test')
  direct = compare.paired_interval(*sides, 'miou')
  assert got['ci'] == [direct['low'], direct['high']]
  assert got['ci'][0] <= got['diff'] <= got['ci'][1]
  assert got['seed_se'] is not None  # Ours holds two seeds: the seed spread is known
  low, high = (100 * v for v in got['ci'])
  assert f'{got["diff"] * 100:+.2f} [{low:+.2f}, {high:+.2f}]' in lines[0]


def test_table2_intervals_worked_out_before_anything_is_printed(tmp_path, monkeypatch):
  # Where each run's per-image sums come from goes to stderr while the intervals are worked
  # out; with stdout and stderr in one terminal, those lines come before the table, never
  # between its lines.
  root = make_table2(tmp_path)

  def fake_against_ours(rows):
    print('per-image statistics from somewhere', file=sys.stderr)
    return [f'{rows[1]["variant"]} - Ours: mIoU -5.00 [-6.00, -4.00]']

  monkeypatch.setattr(table2, 'against_ours', fake_against_ours)
  both = io.StringIO()
  with contextlib.redirect_stdout(both), contextlib.redirect_stderr(both):
    table2.print_table(str(root), intervals=True)
  lines = both.getvalue().splitlines()
  assert lines[0] == 'per-image statistics from somewhere'
  assert lines[1].startswith('Table 2 (ablations) from ')
  header = next(i for i, line in enumerate(lines) if line.startswith('differences from Ours'))
  assert lines[header + 1] == '  w/o ITS - Ours: mIoU -5.00 [-6.00, -4.00]'
  both = io.StringIO()
  with contextlib.redirect_stdout(both), contextlib.redirect_stderr(both):
    table2.print_table(str(root), intervals=False)  # no intervals asked: none worked out
  assert 'per-image statistics' not in both.getvalue()
