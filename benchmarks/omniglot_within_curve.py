"""Learning curves of Omniglot 20-way 1-shot within one alphabet (tune_configs/omniglot_20w_within_cpu):
every kept checkpoint of each run evaluated on the same within-alphabet test tasks of the held-out
alphabets (the run's own evaluation protocol: `metatrain eval RUN --local --tasks N`), as accuracy
with its 95% CI against meta-iteration, beside the error rates Lake et al. (2015) list for this task.

    python benchmarks/omniglot_within_curve.py CURVE_DIR [CURVE_DIR ...] --tasks 300 --out FIG.png

A CURVE_DIR holds one folder per kept checkpoint (it<N>/ with the run's config.yaml and that
checkpoint.pt), as copied while the run trains; its name labels the curve.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import main as metatrain  # noqa: E402

# Lake, Salakhutdinov & Tenenbaum (Science 2015) and the references of the issue: error on 20-way
# 1-shot within one alphabet
REFERENCE_ERRORS = {"deep convnet": 0.135, "Siamese convnet (Koch 2015)": 0.080}


def evaluate(point: Path, tasks: int) -> dict:
    out = point / f"eval-seed0-tasks{tasks}.json"
    if not out.is_file():
        with contextlib.redirect_stdout(io.StringIO()):
            if metatrain(["eval", str(point), "--local", "--tasks", str(tasks)]) != 0:
                raise SystemExit(f"eval of {point} failed")
    r = json.loads(out.read_text())
    return {"iteration": r["iteration"], "mean": r["results"]["1"]["mean"], "ci95": r["results"]["1"]["ci95"],
            "n": r["results"]["1"]["n"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("curves", nargs="+")
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--out", default="omniglot_within_curve.png")
    args = ap.parse_args()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)
    curves = {}
    for d in map(Path, args.curves):
        points = sorted((p for p in d.iterdir() if (p / "checkpoint.pt").is_file()),
                        key=lambda p: int(p.name.removeprefix("it")))
        curves[d.name] = [evaluate(p, args.tasks) for p in points]
        print(f"\n{d.name}: accuracy on {args.tasks} within-alphabet 20-way 1-shot test tasks (95% CI)")
        print("| iteration | accuracy | error |")
        print("|---|---|---|")
        for c in curves[d.name]:
            print(f"| {c['iteration']} | {c['mean']:.3f} ± {c['ci95']:.3f} | {1 - c['mean']:.3f} |", flush=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for i, (name, points) in enumerate(curves.items()):
        its = [p["iteration"] for p in points]
        err = [1 - p["mean"] for p in points]
        ci = [p["ci95"] for p in points]
        ax.errorbar(its, err, yerr=ci, marker="o", ms=3, capsize=2, color=f"C{i}", label=name)
    for j, (name, e) in enumerate(REFERENCE_ERRORS.items()):
        ax.axhline(e, ls=("--", ":")[j % 2], lw=1, color="k", label=f"{name}: {e:.1%} (30 training alphabets)")
    ax.set(xlabel="meta-iteration", ylabel="error, 20-way 1-shot within one alphabet",
           title=f"Held-out alphabets (Sanskrit, Japanese katakana), {args.tasks} tasks per point", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"\nfigure: {args.out}\ndate: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
