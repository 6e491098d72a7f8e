"""launch/seeds.sh and launch/table2.sh: argument errors, and resuming over finished seeds
(fabricated finished run folders, so that nothing is trained and only aggregate runs)."""

import ast
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from limijax import table2
from test_aggregate import SEEDS, VARIANTS, make_run, make_table2

REPO = pathlib.Path(__file__).resolve().parents[1]
SEEDS_SH = REPO / 'launch' / 'seeds.sh'
TABLE2_SH = REPO / 'launch' / 'table2.sh'


def _value(text):
  """A --config.KEY=VALUE flag's value as the config flags parse it: a Python literal, or
  else the string itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _sh(script, *args, cwd=REPO):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['PYTHON'] = sys.executable
  return subprocess.run(['bash', str(script), *map(str, args)], capture_output=True, text=True,
                        timeout=300, cwd=cwd, env=env)


@pytest.mark.parametrize('args, message', [
    ((), 'usage: launch/seeds.sh CONFIG N ROOT'),
    (('configs/synthetic.py', '2'), 'usage: launch/seeds.sh CONFIG N ROOT'),
    (('configs/synthetic.py', 'two', 'ROOT'), "error: N must be a positive integer, got 'two'"),
    (('configs/synthetic.py', '0', 'ROOT'), "error: N must be a positive integer, got '0'"),
    (('configs/synthetic.py', '-1', 'ROOT'), "error: N must be a positive integer, got '-1'"),
    (('configs/nope.py', '2', 'ROOT'), 'error: config file configs/nope.py not found'),
    (('configs/synthetic.py', '2', 'ROOT', '--config.seed=3'), 'error: --config.seed=3 is set'),
    (('configs/synthetic.py', '2', 'ROOT', '--workdir=x'), 'error: --workdir=x is set'),
])
def test_seeds_sh_argument_errors_are_one_line_exit_2(tmp_path, args, message):
  args = [str(tmp_path / 'root') if a == 'ROOT' else a for a in args]
  proc = _sh(SEEDS_SH, *args)
  assert proc.returncode == 2
  assert proc.stdout == ''
  err = proc.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(message), proc.stderr
  assert not (tmp_path / 'root').exists()  # nothing written


def test_seeds_sh_skips_finished_seeds_and_aggregates(tmp_path):
  root = tmp_path / 'runs'
  for seed, test, best in SEEDS:
    make_run(root / f'seed_{seed}', seed, test, best, val_curve=[(2, 0.4), (4, 0.5)])
  proc = _sh(SEEDS_SH, 'configs/synthetic.py', '3', root, '--config.num_epochs=1')
  assert proc.returncode == 0, proc.stderr
  for k in range(3):
    assert f'== seed {k}: finished, skipped ({root}/seed_{k}/results.json exists)' in proc.stdout
  assert 'limijax.main' not in proc.stdout + proc.stderr and '->' not in proc.stdout
  assert '| miou | 0.6500 ± 0.0500 | 0.6000 | 0.7000 | 3 |' in proc.stdout
  assert (root / 'aggregate.png').exists()
  assert json.loads(proc.stdout.strip().splitlines()[-1])['seeds'] == [0, 1, 2]


def test_table2_sh_argument_errors_are_one_line_exit_2(tmp_path):
  for args, message in [((), 'usage: launch/table2.sh [--base=CONFIG] ROOT N'),
                        ((tmp_path / 'r', 'x'), "error: N must be a positive integer, got 'x'"),
                        ((tmp_path / 'r', '0'), "error: N must be a positive integer, got '0'"),
                        (('--base=configs/nope.py', tmp_path / 'r', '2'),
                         'error: base config configs/nope.py not found')]:
    proc = _sh(TABLE2_SH, *args)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), proc.stderr
  assert not (tmp_path / 'r').exists()


def test_table2_sh_variants_match_the_table_in_order():
  text = TABLE2_SH.read_text()
  listed = re.findall(r'^  "(\w+) ?([^"]*)"$', text, flags=re.M)
  assert listed == [(name, change) for _, name, change in table2.ROWS]
  # each ablation row changes one key of the base config, to a value it accepts
  from limijax import defaults  # pylint: disable=g-import-not-at-top
  base = defaults.base_config()
  for name, change in listed[1:]:
    key, value = change.removeprefix('--config.').split('=')
    config = defaults.base_config()
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = _value(value)
    defaults.checked(config)
    assert defaults.diff_keys(base.to_dict(), config.to_dict()) == [key], name


def test_table2_sh_over_finished_seeds_prints_the_table(tmp_path):
  # Every variant's seeds 0 and 1 finished: seven seeds.sh skip everything, then the table,
  # on the base config given.
  make_table2(tmp_path)
  proc = _sh(TABLE2_SH, f'--base={REPO / "configs" / "nuaa.py"}', tmp_path, '2',
             '--config.num_epochs=1', cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.count(': finished, skipped') == 2 * len(VARIANTS)
  for name in VARIANTS:
    assert f'==== {name} (' in proc.stdout
    assert (tmp_path / name / 'aggregate.png').exists()
  assert ('| Ours | 67.00 ± 1.41 | 57.00 ± 1.41 | 85.00 ± 7.07 | 15.00 ± 7.07 | 4.58 ± 0.00 '
          '| 0.016 | 2 |' in proc.stdout)
  rows = json.loads(proc.stdout.strip().splitlines()[-1])['rows']
  assert [r['variant'] for r in rows] == [label for label, _, _ in table2.ROWS]


# --------------------------------------------------------------------------- choices.sh
CHOICES_SH = REPO / 'launch' / 'choices.sh'


def _arms():
  text = CHOICES_SH.read_text()
  block = text[text.index('\narms=(\n'):]
  block = block[:block.index('\n)\n')]
  return re.findall(r'^  "(\w+) ?([^"]*)"$', block, flags=re.M)


def test_choices_sh_arms_each_change_their_keys_to_values_the_config_accepts():
  from limijax import defaults  # pylint: disable=g-import-not-at-top
  arms = _arms()
  assert arms[0] == ('default', '') and len(arms) == len(set(a for a, _ in arms)) >= 8
  base = defaults.base_config().to_dict()
  for name, change in arms[1:]:
    config = defaults.base_config()
    keys = []
    for flag in change.split():
      key, value = flag.removeprefix('--config.').split('=')
      *parents, leaf = key.split('.')
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = _value(value)
      keys.append(key)
    defaults.checked(config)
    assert defaults.diff_keys(base, config.to_dict()) == sorted(keys), name


def test_choices_sh_arms_hold_every_table2_row_under_a_name_table2_reads():
  # Table 2 at the arms' schedule comes from the choices' ROOT: every row is an arm with
  # the same change, named as Table 2 names it or as table2.CHOICES_NAMES maps it.
  arms = dict(_arms())
  for label, name, change in table2.ROWS:
    arm = name if name in arms else table2.CHOICES_NAMES.get(name)
    assert arm in arms, label
    assert arms[arm] == change, label


@pytest.mark.parametrize('args, message', [
    ((), 'usage: launch/choices.sh [--base=CONFIG] ROOT EPOCHS N'),
    (('ROOT', 'x', '3'), "error: EPOCHS must be a positive integer, got 'x'"),
    (('ROOT', '30', '0'), "error: N must be a positive integer, got '0'"),
    (('--base=configs/nope.py', 'ROOT', '30', '3'), 'error: base config configs/nope.py not found'),
    (('ROOT', '30', '3', 'norm_batch', 'nope'), "error: unknown arm 'nope'; arms: default"),
    (('ROOT', '30', '3', '--', '--config.num_seeds=2'), 'error: --config.num_seeds=2 is set'),
])
def test_choices_sh_argument_errors_are_one_line_exit_2(tmp_path, args, message):
  args = [str(tmp_path / 'root') if a == 'ROOT' else a for a in args]
  proc = _sh(CHOICES_SH, *args)
  assert proc.returncode == 2
  err = proc.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(message), proc.stderr
  assert not (tmp_path / 'root').exists()
