#!/usr/bin/env bash
# Train one config over seeds 0..N-1, one process per seed, into ROOT/seed_<k>.
#
#   launch/seeds.sh CONFIG N ROOT [extra flags...]
#   e.g. launch/seeds.sh configs/nudt.py 5 workdirs/nudt_seeds --config.data.root=/data/NUDT-SIRST
#
# Only `seed` varies: the data split (data.split_seed) is shared by every seed. Re-running
# the same line resumes unfinished seeds and skips finished ones.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: launch/seeds.sh CONFIG N ROOT [extra flags...]" >&2
  exit 2
fi
config=$1; n=$2; root=$3; shift 3
case $n in ''|*[!0-9]*) echo "error: N must be a positive integer, got '$n'" >&2; exit 2;; esac
[ -f "$config" ] || { echo "error: config file $config not found" >&2; exit 2; }
mkdir -p "$root"
for ((k = 0; k < n; k++)); do
  echo "== seed $k -> $root/seed_$k"
  python -m limijax.main --config="$config" --workdir="$root/seed_$k" --config.seed="$k" "$@"
done
