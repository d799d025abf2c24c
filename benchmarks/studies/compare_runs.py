"""Two runs of the same sweep, run by run: each trial's results.json (timings and placement left out)
and its final checkpoint's parameters and Adam state, bit for bit; halving's rungs and PBT's lineage
are part of results.json.

Usage:  python benchmarks/studies/compare_runs.py SWEEP_DIR_A SWEEP_DIR_B
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

TIMING = ("seconds", "tasks_per_s", "placement", "plots")


def strip(tree):
    if isinstance(tree, dict):
        return {k: strip(v) for k, v in tree.items() if k not in TIMING}
    if isinstance(tree, list):
        return [strip(v) for v in tree]
    return tree


def same_tensors(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def main(a: str, b: str) -> int:
    runs = sorted(p.name for p in (Path(a) / "trials").iterdir() if (p / "results.json").is_file())
    differ = 0
    for name in runs:
        ra, rb = (strip(json.loads((Path(d) / "trials" / name / "results.json").read_text())) for d in (a, b))
        ca, cb = (torch.load(Path(d) / "trials" / name / "checkpoint.pt", weights_only=True) for d in (a, b))
        results_same = ra == rb
        state_same = all(same_tensors(ca[k], cb[k]) for k in ("iteration", "params", "optimizer", "status"))
        differ += not (results_same and state_same)
        print(f"{name}: {ra['status']} at {ra['iterations']} | results.json {'identical' if results_same else 'DIFFER'}"
              f" | checkpoint {'identical' if state_same else 'DIFFERS'}")
    print(f"{len(runs)} runs, {len(runs) - differ} identical to the last bit")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
