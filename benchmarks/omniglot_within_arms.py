"""The arms of the Omniglot 20-way 1-shot within-alphabet sweep side by side: each run's evaluation on
the same 1,000 within-alphabet test tasks of the held-out alphabets (eval seed 0, so task i is the
same task for every arm), as error with its 95% CI and the paired difference of per-task accuracy
against a reference arm (mean and 95% CI over tasks; negative: the arm errs less).

    python benchmarks/omniglot_within_arms.py EVAL_JSON [EVAL_JSON ...] --reference EVAL_JSON

An EVAL_JSON is a run's results.json (the evaluation at its end) or an eval-seed0-tasks1000.json
written by `metatrain eval RUN --local --tasks 1000`; its name in the table is its folder's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.driver.evaluation import mean_ci95  # noqa: E402


def load(path: Path) -> tuple[int, np.ndarray]:
    r = json.loads(path.read_text())
    row = r["results"]["1"]
    if r.get("seed", r.get("eval", {}).get("seed")) not in (0, None) or row["n"] < 1000:
        raise SystemExit(f"{path}: not the 1,000 tasks of eval seed 0")
    return r["iterations"] if "iterations" in r else r["iteration"], np.asarray(row["per_task"], dtype=float)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evals", nargs="+", type=Path)
    ap.add_argument("--reference", type=Path, required=True)
    args = ap.parse_args()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    _, ref = load(args.reference)
    print(f"reference: {args.reference.parent.name}\n")
    print("| arm | iteration | error (95% CI) | paired difference in error against the reference |")
    print("|---|---|---|---|")
    for path in args.evals:
        iteration, acc = load(path)
        m, ci = mean_ci95(acc)
        d, dci = mean_ci95(ref - acc)  # the arm's error minus the reference's, task by task
        print(f"| {path.parent.name} | {iteration} | {1 - m:.1%} ± {ci:.1%} | {d:+.1%} ± {dci:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
