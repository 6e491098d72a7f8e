#!/usr/bin/env bash
# The paper's open choices, each as an arm against the default: every arm trains N seeds
# in one process (--config.num_seeds) for EPOCHS epochs into ROOT/<arm>/seed_<k>, then
# python -m limijax.compare ROOT/<arm> ROOT/default prints the paired bootstrap interval of
# the difference (test split) beside each side's seed spread.
#
#   launch/choices.sh [--base=CONFIG] ROOT EPOCHS N [ARM...] [-- extra flags...]
#   e.g. launch/choices.sh --base=configs/nuaa.py workdirs/choices30 30 3 default norm_batch
#
# CONFIG defaults to configs/nuaa.py. Without ARMs every arm below runs, in order. The
# default arm runs first whenever an arm is compared with it. Re-running the same line
# resumes: a finished run is not trained again (limijax.main), so the last line prints the
# comparisons again at the cost of reading the per-image caches.
# Table 2's ablations are arms too, under Table 2's folder names (no_ses, no_lmb, no_huf,
# no_c2f); with default, its_off and c2f_hard (its "Ours", "w/o ITS" and hard-label rows)
# they make the table at EPOCHS: python -m limijax.aggregate --table2 --intervals ROOT.
# PYTHON (default: python) is the interpreter that runs limijax.
set -euo pipefail
usage="usage: launch/choices.sh [--base=CONFIG] ROOT EPOCHS N [ARM...] [-- extra flags...]"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
python=${PYTHON:-python}
base=$repo/configs/nuaa.py
case ${1:-} in
  --base=*) base=${1#--base=}; shift;;
  --base) echo "error: give the base config as --base=CONFIG" >&2; exit 2;;
esac
if [ $# -lt 3 ]; then
  echo "$usage" >&2
  exit 2
fi
root=$1; epochs=$2; n=$3; shift 3
for v in "$epochs:EPOCHS" "$n:N"; do
  value=${v%:*}; name=${v##*:}
  case $value in ''|*[!0-9]*) echo "error: $name must be a positive integer, got '$value'" >&2; exit 2;; esac
  [ "$((10#$value))" -ge 1 ] || { echo "error: $name must be a positive integer, got '$value'" >&2; exit 2; }
done
[ -n "$root" ] || { echo "error: ROOT must not be empty" >&2; exit 2; }
[ -f "$base" ] || { echo "error: base config $base not found" >&2; exit 2; }
# Arm name and the keys it changes from the base config, most consequential first.
arms=(
  "default"
  "norm_batch --config.model.norm=batch"
  "its_measured --config.data.its.min_size=1.6 --config.data.its.max_size=4.6 --config.data.its.min_contrast=0.13 --config.data.its.max_contrast=0.63"
  "its_off --config.data.its.enabled=False"
  "cosine_restarts --config.cosine=restarts"
  "cosine_single --config.cosine=single"
  "no_flips --config.data.flips=False"
  "c2f_hard --config.loss.side_alphas=(0.0,0.0,0.0,0.0)"
  "crops_any --config.data.crop_target_prob=0.0"
  "its_strong --config.data.its.prob=1.0 --config.data.its.max_targets=5"
  "its_lines --config.data.its.line_prob=0.5"
  "no_ses --config.model.stem=dsconv_bn"
  "no_lmb --config.model.block=residual"
  "no_huf --config.model.upsampler=bilinear"
  "no_c2f --config.model.head=fpn"
)
chosen=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  chosen+=("$1"); shift
done
[ "${1:-}" = "--" ] && shift
declare -A changes
names=()
for a in "${arms[@]}"; do
  read -r name rest <<< "$a"
  changes[$name]=$rest
  names+=("$name")
done
[ ${#chosen[@]} -gt 0 ] || chosen=("${names[@]}")
for c in "${chosen[@]}"; do
  [ -n "${changes[$c]+x}" ] || { echo "error: unknown arm '$c'; arms: ${names[*]}" >&2; exit 2; }
done
for flag in "$@"; do
  case $flag in
    --workdir|--workdir=*|--config|--config=*|--config.num_seeds*|--config.num_epochs*)
      echo "error: $flag is set by launch/choices.sh; leave it out" >&2
      exit 2;;
  esac
done
train() {  # arm
  local name=$1 dir=$root/$1
  shift
  read -r -a flags <<< "${changes[$name]}"
  echo "==== $name (${changes[$name]:-the base config}) -> $dir"
  "$python" -m limijax.main --config="$base" --workdir="$dir" --config.num_epochs="$epochs" \
    --config.num_seeds="$n" ${flags[@]+"${flags[@]}"} "$@"
}
case " ${chosen[*]} " in *" default "*) ;; *) chosen=("default" "${chosen[@]}");; esac
for c in "${chosen[@]}"; do
  train "$c" "$@"
done
for c in "${chosen[@]}"; do
  [ "$c" = default ] && continue
  echo "==== $c - default"
  "$python" -m limijax.compare "$root/$c" "$root/default"
done
