"""A trained learned optimizer against its baselines, and the paper's generalization tests
(Andrychowicz et al. 2016, section 3.2): the same optimizer, meta-trained on one optimizee, run on
a longer horizon and on other optimizees. Every variant uses fresh test optimizees (the run's
eval.seed and eval.split) and the baselines' learning rates of the run's config (tuned on the
trained-on optimizee, as the paper's figures do).

    python benchmarks/l2l_generalization.py RUN_DIR [--tasks 100] [--variants paper|none]
    python benchmarks/l2l_generalization.py RUN_DIR --redraw   # the figures again, from results.json

Writes RUN_DIR/generalization/{table.md, results.json, <variant>.png}. "beats" means the learned
optimizer's 95% CI of the mean final training loss lies wholly below the best baseline's; "loses"
wholly above; otherwise "overlaps". MNIST cells also give the loss on images the test optimizees
never trained on (tasks/optimizees.py, `unseen_loss`); a run meta-trained with train.meta_loss:
heldout is compared, and its best baseline chosen, on that loss (the measure it was trained and
selected by, and its baselines' rates tuned on).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.driver import checkpoint  # noqa: E402
from pipeline.driver.evaluation import mean_ci95  # noqa: E402
from pipeline.driver.trainer import Trainer  # noqa: E402
from pipeline.plots import optimizer_comparison  # noqa: E402

PAPER = {  # the paper's MNIST generalization tests (their outcome in the paper, in words)
    "as trained": ({}, "the reference"),
    "200 steps": ({"eval.inner_steps": 200}, "still beats the baselines"),
    "40 hidden units": ({"model.hidden": [40]}, "still beats the baselines"),
    "2 hidden layers": ({"model.hidden": [20, 20]}, "still beats the baselines"),
    "ReLU": ({"model.optimizee_activation": "relu"}, "does not beat them"),
}


def outcome(own: dict, best: dict) -> str:
    if own["mean"] is None:
        return "diverged"
    if own["mean"] + own["ci95"] < best["mean"] - best["ci95"]:
        return "beats"
    if own["mean"] - own["ci95"] > best["mean"] + best["ci95"]:
        return "loses"
    return "overlaps"


def cell(row: dict, ci: bool = True) -> str:
    """"training loss / unseen-image loss" of one optimizer's row (the second where the optimizees
    have images they never trained on: MNIST), with 95% CIs."""
    def one(r):
        return f"{r['mean']:.4g}" + (f" ± {r['ci95']:.2g}" if ci else "") if r["mean"] is not None else "diverged"
    return one(row) + (f" / {one(row['unseen'])}" if "unseen" in row else "")


def figure(table: dict, path: Path, method: str, task: str, name: str, loss_name: str) -> None:
    optimizer_comparison(table, path, title=f"{method} on {task}, {name}", y_label=loss_name)


def redraw(run_dir: Path) -> int:
    cfg = load_config(run_dir / "config.yaml")
    from tasks.optimizees import MnistMLP, Quadratic

    loss_name = (MnistMLP if cfg.task.name == "mnist_mlp" else Quadratic).loss_name
    for name, v in json.loads((run_dir / "generalization" / "results.json").read_text()).items():
        figure(v["results"], run_dir / "generalization" / f"{name.replace(' ', '_')}.png", cfg.method, cfg.task.name,
               name, loss_name)
    print(f"redrawn the figures in {run_dir / 'generalization'}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--tasks", type=int, help="test optimizees per variant (default: the run's eval.tasks)")
    ap.add_argument("--variants", choices=("paper", "none"), default="paper",
                    help="paper: the four generalization tests (MNIST optimizees); none: only the run as trained")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every variant, e.g. 'eval.baselines={sgd: 1.0, adam: 0.03}'")
    ap.add_argument("--redraw", action="store_true", help="draw the figures again from generalization/results.json")
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    if args.redraw:
        return redraw(run_dir)
    variants = PAPER if args.variants == "paper" else {"as trained": PAPER["as trained"]}
    out_dir = run_dir / "generalization"
    out_dir.mkdir(exist_ok=True)
    rows, payload = [], {}
    heldout = load_config(run_dir / "config.yaml").train.meta_loss == "heldout"
    measure = "losses on images never trained on" if heldout else "training losses"
    measured = (lambda r: r["unseen"]) if heldout else (lambda r: r)  # the row a verdict reads
    for name, (over, paper) in variants.items():
        overrides = {"backend": "local", "tracking.enabled": False, **over}
        if args.tasks:
            overrides["eval.tasks"] = args.tasks
        cfg = load_config(run_dir / "config.yaml", overrides)
        if args.set:
            sets = [*(f"{k}={json.dumps(v)}" for k, v in overrides.items()), *args.set]
            cfg = load_config(run_dir / "config.yaml", sets)
        t0 = time.perf_counter()
        with Trainer(cfg, run_dir, log=lambda m: None) as trainer:
            trainer.record.load_state_dict(checkpoint.load(run_dir))
            table = trainer.evaluate()
        seconds = time.perf_counter() - t0
        own = table[cfg.method]
        baselines = {k: v for k, v in table.items() if k != cfg.method and measured(v)["mean"] is not None}
        best_name = min(baselines, key=lambda k: measured(baselines[k])["mean"])
        best = baselines[best_name]
        verdict = outcome(measured(own), measured(best))
        # the optimizers saw the same optimizees: the paired difference is the sharper comparison
        diff = np.array(measured(own)["per_task"], dtype=float) - np.array(measured(best)["per_task"], dtype=float)
        d_mean, d_ci = mean_ci95(diff)
        payload[name] = {"overrides": over, "results": table, "best_baseline": best_name, "outcome": verdict,
                         "paired_difference": {"mean": d_mean, "ci95": d_ci}, "seconds": seconds, "paper": paper}
        figure(table, out_dir / f"{name.replace(' ', '_')}.png", cfg.method, cfg.task.name, name,
               trainer.experiment.distribution.loss_name)
        rows.append(f"| {name} | {cfg.eval.inner_steps} | {cell(own)} | "
                    f"{best_name} (lr {best['alpha']:g}) {cell(best)} | "
                    + ", ".join(f"{k} {cell(v, ci=False)}" for k, v in baselines.items() if k != best_name)
                    + f" | {d_mean:+.3g} ± {d_ci:.2g} | **{verdict}** | {paper} |")
        print(rows[-1], flush=True)
    n = payload["as trained"]["results"][cfg.method]["n"]
    md = [f"# {run_dir.name}: learned optimizer against tuned baselines", "",
          f"Each cell: the test optimizees' training loss after their last step / their loss on images they "
          f"never trained on (mean ± 95% CI over {n} fresh test optimizees per variant; the outcome compares "
          f"{measure}" + (" (the run's meta-objective: train.meta_loss heldout)" if heldout
                          else ", as the paper's figures do") + "); "
          f"command: `python benchmarks/l2l_generalization.py {run_dir}"
          + (f" --tasks {args.tasks}" if args.tasks else "") + (" --variants none" if args.variants == "none" else "")
          + "".join(f" --set '{s}'" for s in args.set) + "`.", "",
          "| variant | steps | learned optimizer | best baseline | other baselines | paired difference of "
          f"{measure} (learned − best) | outcome | paper |",
          "|---|---|---|---|---|---|---|---|", *rows, ""]
    (out_dir / "table.md").write_text("\n".join(md))
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2))
    print(f"written {out_dir / 'table.md'}, {out_dir / 'results.json'} and figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
