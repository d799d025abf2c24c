"""Two runs of the same sweep, cell by cell: how far float rounding (another commit, another
compiled graph) moved each report cell, and whether each mean lies inside the other's 95% interval.

Usage:  python benchmarks/studies/compare_reports.py SWEEP_DIR_A SWEEP_DIR_B
        (each a folder holding the report.parquet that `metatrain sweep` / `metatrain report` wrote)
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def main(a: str, b: str) -> None:
    ra, rb = (pd.read_parquet(Path(d) / "report.parquet") for d in (a, b))
    keys = [c for c in ra.columns if c not in ("mean", "ci95", "n", "trials", "diverged", "excluded", "nonfinite",
                                                "updated_fraction")]
    cells = ra.merge(rb, on=keys, suffixes=("_a", "_b"))
    if len(cells) != len(ra) or len(cells) != len(rb):
        raise SystemExit(f"the reports hold different cells ({len(ra)} and {len(rb)}, {len(cells)} in common)")
    print("| " + " | ".join(keys) + " | A | B | B - A | B inside A's CI | A inside B's CI | CIs overlap |")
    print("|" + "---|" * (len(keys) + 6))
    for _, c in cells.iterrows():
        d = c.mean_b - c.mean_a
        print("| " + " | ".join(str(c[k]) for k in keys) + f" | {c.mean_a:.3f} ± {c.ci95_a:.3f} | "
              f"{c.mean_b:.3f} ± {c.ci95_b:.3f} | {d:+.3f} | {'yes' if abs(d) <= c.ci95_a else 'NO'} | "
              f"{'yes' if abs(d) <= c.ci95_b else 'NO'} | {'yes' if abs(d) <= c.ci95_a + c.ci95_b else 'NO'} |")
    diff = (cells.mean_b - cells.mean_a).abs()
    inside = ((diff <= cells.ci95_a) & (diff <= cells.ci95_b)).sum()
    print(f"\n{len(cells)} cells: largest |B - A| {diff.max():.3f}; {inside} with each mean inside the other's "
          f"95% interval; {(diff <= cells.ci95_a + cells.ci95_b).sum()} with overlapping intervals")
    print(f"report.parquet identical to the last bit: {ra.equals(rb)}")
    trials = [Path(d) / "trials.parquet" for d in (a, b)]
    if all(t.is_file() for t in trials):  # every run's evaluation, matched by its swept values
        ta, tb = (pd.read_parquet(t) for t in trials)
        own = ("trial_id", "name", "status", "error", "iterations", "skipped_steps")
        swept = [c for c in ta.columns if c not in own and not c.startswith("eval_")]
        evals = [c for c in ta.columns if c.startswith("eval_")]
        same = (ta.sort_values(swept)[evals].reset_index(drop=True)
                .equals(tb.sort_values(swept)[evals].reset_index(drop=True)))
        print(f"per-run evaluations ({len(ta)} runs, {', '.join(evals)}) identical to the last bit: {same}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
