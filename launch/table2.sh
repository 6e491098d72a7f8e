#!/usr/bin/env bash
# The paper's Table 2 (ablations on IRSTD-1k): the full model and the five ablations, N
# seeds each, through launch/seeds.sh into ROOT/<variant>/seed_<k>, then the table as
# markdown (python -m limijax.aggregate --table2 ROOT): mIoU, nIoU, Pd (%), Fa (x1e-6) as
# mean ± sample std over the seeds, and Params (M).
#
#   launch/table2.sh ROOT N [extra flags...]
#   e.g. launch/table2.sh workdirs/table2 3 --config.data.root=/data/IRSTD-1k
#
# The extra flags go to every run. Re-running the same line resumes (see seeds.sh): finished
# seeds are skipped, so the last line can be re-run to print the table again at no cost.
# PYTHON (default: python) is the interpreter that runs limijax.
set -euo pipefail
usage="usage: launch/table2.sh ROOT N [extra flags...]"
if [ $# -lt 2 ]; then
  echo "$usage" >&2
  exit 2
fi
root=$1; n=$2; shift 2
case $n in ''|*[!0-9]*) echo "error: N must be a positive integer, got '$n'" >&2; exit 2;; esac
[ "$((10#$n))" -ge 1 ] || { echo "error: N must be a positive integer, got '$n'" >&2; exit 2; }
[ -n "$root" ] || { echo "error: ROOT must not be empty" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
# Folder under ROOT and config, in the paper's row order (limijax/aggregate.py TABLE2).
variants=(
  "irstd1k configs/irstd1k.py"
  "no_its configs/ablations/no_its.py"
  "no_ses configs/ablations/no_ses.py"
  "no_lmb configs/ablations/no_lmb.py"
  "no_huf configs/ablations/no_huf.py"
  "no_c2f configs/ablations/no_c2f.py"
)
for v in "${variants[@]}"; do
  read -r name config <<< "$v"
  echo "==== $name ($config) -> $root/$name"
  "$here/seeds.sh" "$repo/$config" "$n" "$root/$name" "$@"
done
"${PYTHON:-python}" -m limijax.aggregate --table2 "$root"
