#!/usr/bin/env bash
# The paper's Table 2 (ablations) on any base config: the full model, the five ablations
# and a sixth "w/o C2F" that keeps the side heads with hard labels, N seeds each, through
# launch/seeds.sh into ROOT/<variant>/seed_<k>, then the table as markdown
# (python -m limijax.aggregate --table2 ROOT): mIoU, nIoU, Pd (%), Fa (x1e-6) and FA/MP
# as mean ± sample std over the seeds, and Params (M).
#
#   launch/table2.sh [--base=CONFIG] ROOT N [extra flags...]
#   e.g. launch/table2.sh --base=configs/nuaa.py workdirs/table2_nuaa 3
#        launch/table2.sh workdirs/table2 3 --config.data.root=/data/IRSTD-1k
#
# CONFIG (default configs/irstd1k.py, the paper's dataset) is every row's base; each
# ablation row changes one key of it (below). The extra flags go to every run. Re-running
# the same line resumes (see seeds.sh): finished seeds are skipped, so the last line can be
# re-run to print the table again at no cost.
# PYTHON (default: python) is the interpreter that runs limijax.
set -euo pipefail
usage="usage: launch/table2.sh [--base=CONFIG] ROOT N [extra flags...]"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
base=$repo/configs/irstd1k.py
case ${1:-} in
  --base=*) base=${1#--base=}; shift;;
  --base) echo "error: give the base config as --base=CONFIG" >&2; exit 2;;
esac
if [ $# -lt 2 ]; then
  echo "$usage" >&2
  exit 2
fi
root=$1; n=$2; shift 2
case $n in ''|*[!0-9]*) echo "error: N must be a positive integer, got '$n'" >&2; exit 2;; esac
[ "$((10#$n))" -ge 1 ] || { echo "error: N must be a positive integer, got '$n'" >&2; exit 2; }
[ -n "$root" ] || { echo "error: ROOT must not be empty" >&2; exit 2; }
[ -f "$base" ] || { echo "error: base config $base not found" >&2; exit 2; }
# Folder under ROOT and the key its row changes, in the table's row order
# (limijax/table2.py ROWS).
variants=(
  "ours"
  "no_its --config.data.its.enabled=False"
  "no_ses --config.model.stem=dsconv_bn"
  "no_lmb --config.model.block=residual"
  "no_huf --config.model.upsampler=bilinear"
  "no_c2f --config.model.head=fpn"
  "no_c2f_hard --config.loss.side_alphas=(0.0,0.0,0.0,0.0)"
)
for v in "${variants[@]}"; do
  read -r name change <<< "$v"
  echo "==== $name (${change:-the base config}) -> $root/$name"
  "$here/seeds.sh" "$base" "$n" "$root/$name" ${change:+"$change"} "$@"
done
"${PYTHON:-python}" -m limijax.aggregate --table2 "$root"
