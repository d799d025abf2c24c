#!/bin/bash
# Behaviour kept by a refactor: the sweeps in benchmarks/studies/refactor_check/ (packed populations,
# halving, PBT; a few minutes on 2 cores) run at two commits, each from a clean worktree with this
# checkout's .venv, then compared report by report (compare_reports.py) and run by run
# (compare_runs.py: results.json and final checkpoints, bit for bit).
#   bash benchmarks/studies/refactor_check.sh BEFORE_COMMIT AFTER_COMMIT [WORK_DIR]
set -e
repo=$(cd "$(dirname "$0")/../.." && pwd)
before=$1; after=$2; work=${3:-/tmp/refactor_check}
rm -rf "$work"; mkdir -p "$work"
source "$repo/.venv/bin/activate"
for side in before after; do
  commit=${!side}
  git -C "$repo" worktree add -f -q "$work/src_$side" "$commit"
  ln -sfn "$repo/../shared" "$work/shared"  # data beside each worktree, as beside the repository
  out=$work/$side; mkdir -p "$out"
  for s in packed halving pbt; do
    sed "s#OUT#$out#" "$repo/benchmarks/studies/refactor_check/$s.yaml" > "$out/$s.yaml"
    echo "== $side ($commit) $s: $(date)"
    (cd "$work/src_$side" && METATRAIN_HOME=$out/home PYTHONPATH=$work/src_$side \
      python -c "import sys; from pipeline.cli import main; sys.exit(main(['sweep', '$out/$s.yaml']))" > "$out/$s.log" 2>&1)
  done
done
echo "== compared: $(date)"
for s in packed halving pbt; do
  echo "-- $s"
  python "$repo/benchmarks/studies/compare_reports.py" "$work/before/$s" "$work/after/$s" | tail -3
  python "$repo/benchmarks/studies/compare_runs.py" "$work/before/$s" "$work/after/$s"
done
for side in before after; do git -C "$repo" worktree remove --force "$work/src_$side"; done
