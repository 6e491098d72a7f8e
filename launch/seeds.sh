#!/usr/bin/env bash
# Train one config over seeds 0..N-1, one process per seed, into ROOT/seed_<k>, then print
# their mean ± std (python -m limijax.aggregate ROOT, which also writes ROOT/aggregate.png).
#
#   launch/seeds.sh CONFIG N ROOT [extra flags...]
#   e.g. launch/seeds.sh configs/nudt.py 5 workdirs/nudt_seeds --config.data.root=/data/NUDT-SIRST
#
# Only `seed` varies: the data split (data.split_seed) is shared by every seed. Re-running
# the same line resumes: a seed whose results.json exists is skipped (it is not checked
# against this line again; aggregate refuses seeds whose configs differ), an unfinished one
# is resumed from its latest checkpoint by limijax.main itself. The extra flags go to every
# seed; --workdir, --config and --config.seed are set here and refused among them.
# PYTHON (default: python) is the interpreter that runs limijax.
set -euo pipefail
usage="usage: launch/seeds.sh CONFIG N ROOT [extra flags...]"
if [ $# -lt 3 ]; then
  echo "$usage" >&2
  exit 2
fi
config=$1; n=$2; root=$3; shift 3
python=${PYTHON:-python}
case $n in ''|*[!0-9]*) echo "error: N must be a positive integer, got '$n'" >&2; exit 2;; esac
[ "$((10#$n))" -ge 1 ] || { echo "error: N must be a positive integer, got '$n'" >&2; exit 2; }
n=$((10#$n))
[ -f "$config" ] || { echo "error: config file $config not found" >&2; exit 2; }
[ -n "$root" ] || { echo "error: ROOT must not be empty" >&2; exit 2; }
for flag in "$@"; do
  case $flag in
    --workdir|--workdir=*|--config|--config=*|--config.seed|--config.seed=*)
      echo "error: $flag is set by launch/seeds.sh (ROOT/seed_<k>, CONFIG, seed k); leave it out" >&2
      exit 2;;
  esac
done
mkdir -p "$root"
for ((k = 0; k < n; k++)); do
  dir="$root/seed_$k"
  if [ -f "$dir/results.json" ]; then
    echo "== seed $k: finished, skipped ($dir/results.json exists)"
    continue
  fi
  if [ -f "$dir/config.json" ]; then
    echo "== seed $k -> $dir (resuming)"
  else
    echo "== seed $k -> $dir"
  fi
  "$python" -m limijax.main --config="$config" --workdir="$dir" --config.seed="$k" "$@" || {
    status=$?
    echo "error: seed $k stopped (exit $status); run the same line again to resume" >&2
    exit "$status"
  }
done
echo "== $n seed(s) under $root"
"$python" -m limijax.aggregate "$root"
