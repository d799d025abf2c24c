"""Our study tables beside the thesis's numbers (DESIGN section 4), cell by cell.

Reads the report.parquet that `metatrain report` wrote for each study (copied here under
benchmarks/studies/<study>/) and prints Markdown: ours (mean +- 95% CI), the thesis's, and whether
the two 95% intervals overlap ("yes"), or not ("NO", with the gap in units of the larger CI).
Usage:  python benchmarks/studies/compare_thesis.py [--dir benchmarks/studies]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.parquet as pq

SINE = {  # model -> K -> (mean, ci95)
    "maml": {5: (1.07, 0.11), 10: (0.71, 0.07), 20: (0.50, 0.05)},
    "metasgd": {5: (0.88, 0.14), 10: (0.53, 0.09), 20: (0.35, 0.06)},
    "mnet_full": {5: (0.91, 0.09), 10: (0.63, 0.07), 20: (0.38, 0.04)},
    "mnet": {5: (0.88, 0.09), 10: (0.60, 0.06), 20: (0.41, 0.04)},
    "tnet": {5: (0.83, 0.08), 10: (0.56, 0.06), 20: (0.38, 0.04)},
    "mtnet_full": {5: (0.81, 0.08), 10: (0.51, 0.05), 20: (0.35, 0.04)},
    "mtnet": {5: (0.76, 0.09), 10: (0.49, 0.05), 20: (0.33, 0.04)},
}
ROBUSTNESS = {  # alpha -> method -> (mean, ci95), 10-shot
    10.0: {"maml": (171.92, 25.04), "tnet": (4.08, 0.30), "mtnet": (4.18, 0.30)},
    1.0: {"maml": (5.81, 0.49), "tnet": (4.15, 0.30), "mtnet": (0.61, 0.07)},
    0.1: {"maml": (1.05, 0.11), "tnet": (0.68, 0.06), "mtnet": (0.54, 0.05)},
    0.01: {"maml": (0.71, 0.07), "tnet": (0.56, 0.06), "mtnet": (0.49, 0.05)},
    0.001: {"maml": (0.82, 0.08), "tnet": (0.59, 0.06), "mtnet": (0.59, 0.06)},
    0.0001: {"maml": (2.54, 0.19), "tnet": (0.62, 0.06), "mtnet": (0.72, 0.07)},
}


def verdict(ours: tuple[float, float], ref: tuple[float, float]) -> str:
    (m, c), (r, rc) = ours, ref
    gap = abs(m - r) - (c + rc)
    return "yes" if gap <= 0 else f"NO ({gap / max(c, rc):.1f} CI beyond)"


def cell(m: float, c: float) -> str:
    digits = 1 if abs(m) >= 100 else 2 if abs(m) >= 10 else 3
    return f"{m:.{digits}f} ± {c:.{digits}f}"


def sine_table(path: Path) -> str:
    rows = {(r["method"], r["K"]): r for r in pq.read_table(path).to_pylist()}
    out = ["| model | K | ours | thesis | 95% intervals overlap |", "|---|---|---|---|---|"]
    for model, by_k in SINE.items():
        for k, ref in by_k.items():
            r = rows.get((model, k))
            if r and r["mean"] is not None:
                out.append(f"| {model} | {k} | {cell(r['mean'], r['ci95'])} | {cell(*ref)} | "
                           f"{verdict((r['mean'], r['ci95']), ref)} |")
    return "\n".join(out)


def robustness_table(path: Path) -> str:
    rows = {(r["alpha"], r["method"]): r for r in pq.read_table(path).to_pylist() if r["K"] == 10}
    out = ["| alpha | method | ours | thesis | 95% intervals overlap |", "|---|---|---|---|---|"]
    for alpha, by_method in ROBUSTNESS.items():
        for method, ref in by_method.items():
            r = rows.get((alpha, method))
            if r and r["mean"] is not None:
                out.append(f"| {alpha:g} | {method} | {cell(r['mean'], r['ci95'])} | {cell(*ref)} | "
                           f"{verdict((r['mean'], r['ci95']), ref)} |")
    return "\n".join(out)


def seeds_table(first: Path, followup: Path) -> str:
    """The follow-up cells seed by seed: how far apart separate meta-training runs land."""
    rows = pq.read_table(first).to_pylist() + pq.read_table(followup).to_pylist()
    cells = sorted({(r["alpha"], r["method"]) for r in pq.read_table(followup).to_pylist()}, key=lambda c: (-c[0], c[1]))
    seeds = sorted({r["seed"] for r in rows})
    out = ["| alpha | method | " + " | ".join(f"seed {s}" for s in seeds) + " | thesis |",
           "|---|---|" + "---|" * (len(seeds) + 1)]
    for alpha, method in cells:
        by_seed = {r["seed"]: r for r in rows if (r["alpha"], r["method"]) == (alpha, method)}
        vals = [cell(by_seed[s]["eval_K10_mean"], by_seed[s]["eval_K10_ci95"])
                if s in by_seed and by_seed[s]["eval_K10_mean"] is not None else "-" for s in seeds]
        out.append(f"| {alpha:g} | {method} | " + " | ".join(vals) + f" | {cell(*ROBUSTNESS[alpha][method])} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(Path(__file__).parent))
    d = Path(ap.parse_args().dir)
    if (d / "sine_models" / "report.parquet").is_file():
        print("## Sine table\n\n" + sine_table(d / "sine_models" / "report.parquet") + "\n")
    if (d / "robustness_alpha" / "report.parquet").is_file():
        print("## Step-size robustness (K = 10)\n\n" + robustness_table(d / "robustness_alpha" / "report.parquet") + "\n")
    if (d / "robustness_followup" / "trials.parquet").is_file():
        print("## Robustness follow-up, seed by seed (K = 10)\n\n"
              + seeds_table(d / "robustness_alpha" / "trials.parquet", d / "robustness_followup" / "trials.parquet") + "\n")


if __name__ == "__main__":
    main()
