#!/usr/bin/env bash
# The study sweeps end to end, as a user runs them, with an empty Inductor cache: each sweep file is
# copied with its output_dir pointed at a fresh directory, run with `metatrain sweep`, and timed.
#   bash benchmarks/studies/e2e.sh [SWEEP ...]   (default: sine_models, robustness_alpha_1seed, robustness_alpha)
# Prints `date` before and after, and "<sweep>: <seconds> s" per sweep.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp -d /tmp/e2e.XXXX)
sweeps=("$@")
[ ${#sweeps[@]} -gt 0 ] || sweeps=(tune_configs/sine_models.yaml benchmarks/studies/robustness_alpha_1seed.yaml
                                   tune_configs/robustness_alpha.yaml)
date
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; commit $(git rev-parse --short HEAD); output in $out"
for file in "${sweeps[@]}"; do
  name=$(basename "$file" .yaml)
  sed "s#^output_dir: .*#output_dir: $out/$name#" "$file" > "$out/$name.yaml"
  export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d /tmp/e2e-inductor.XXXX)
  t0=$(date +%s.%N)
  .venv/bin/metatrain sweep "$out/$name.yaml" > "$out/$name.log" 2>&1 || { tail -20 "$out/$name.log"; exit 1; }
  t1=$(date +%s.%N)
  printf '%s: %.0f s\n' "$name" "$(echo "$t1 - $t0" | bc)"
  grep -E "^(trials|sweep|report)" "$out/$name.log" | tail -3 || true
done
date
