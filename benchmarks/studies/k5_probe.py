"""The sine table's K = 5 column, probed: the trained sine_models runs re-evaluated (no training) to
measure candidate reasons why a cell differs from the thesis (M-net at K = 5 is the one outside).

For every model (seeds pooled task by task, as the report):
  1. K = 5, 10, 20 after one inner step with the mask drawn as in training ("sample": Gumbel-softmax
     noise at the run's temperature, the MT-net reference's only mode) and with the most probable
     mask ("argmax"); models without masks have one mode.
  2. How far a 600-task test set (the thesis's size) moves a cell: the K = 5 and K = 10 means and
     their ratio on `--sets` disjoint 600-task test sets of an eval seed no run trains on.

    python benchmarks/studies/k5_probe.py sweeps/sine_models [--tasks 2000] [--sets 10]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from pipeline.config import load_config  # noqa: E402
from pipeline.driver import checkpoint  # noqa: E402
from pipeline.shards.experiment import Experiment  # noqa: E402

THESIS_K5_K10 = {"maml": (1.07, 0.71), "metasgd": (0.88, 0.53), "mnet_full": (0.91, 0.63), "mnet": (0.88, 0.60),
                 "tnet": (0.83, 0.56), "mtnet_full": (0.81, 0.51), "mtnet": (0.76, 0.49)}
SET_SEED = 424242  # disjoint 600-task sets; no training run uses this seed


def per_task(runs: list, indices, shots: int, seed: int, mode: str) -> np.ndarray:
    """Post-adaptation MSE per task, averaged over the seeds' runs (one inner step)."""
    out = [exp.eval_shard(params, indices, shots=shots, seed=seed, inner_steps=1, mask_mode=mode)[0].double().numpy()
           for exp, params in runs]
    return np.mean(out, 0)


def cell(a: np.ndarray) -> str:
    return f"{a.mean():.3f} ± {1.96 * a.std(ddof=1) / np.sqrt(len(a)):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=987654, help="the study's eval seed")
    ap.add_argument("--sets", type=int, default=10, help="disjoint 600-task test sets")
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = {}
    for d in sorted((args.sweep_dir / "trials").iterdir()):
        cfg = load_config(d / "config.yaml", local=False)
        params = checkpoint.load(d, log=lambda m: None, keys=checkpoint.PARAMS_KEYS)["params"]
        models.setdefault(cfg.method, []).append((Experiment(cfg), params))
    print(f"{args.sweep_dir}: {', '.join(f'{m} ({len(r)} seeds)' for m, r in models.items())}\n")
    print(f"1. {args.tasks} test tasks of eval seed {args.seed}, one inner step\n")
    print("| model | mask | K = 5 | K = 10 | K = 20 | K5 / K10 ours | K5 / K10 thesis |")
    print("|---|---|---|---|---|---|---|")
    for method, runs in models.items():
        masked = any("zeta" in k for k in runs[0][1])
        for mode in ("sample", "argmax") if masked else ("sample",):
            cells = {k: per_task(runs, range(args.tasks), k, args.seed, mode) for k in (5, 10, 20)}
            t5, t10 = THESIS_K5_K10[method]
            shown = mode if masked else "-"
            print(f"| {method} | {shown} | {cell(cells[5])} | {cell(cells[10])} | {cell(cells[20])} | "
                  f"{cells[5].mean() / cells[10].mean():.2f} | {t5 / t10:.2f} |", flush=True)
    print(f"\n2. {args.sets} disjoint 600-task test sets of eval seed {SET_SEED} (mask sampled): range of the "
          "set means\n")
    print("| model | K = 5 min - max | K = 10 min - max | K5 / K10 min - max | thesis K = 5 | thesis K5 / K10 |")
    print("|---|---|---|---|---|---|")
    for method, runs in models.items():
        k5 = per_task(runs, range(600 * args.sets), 5, SET_SEED, "sample").reshape(args.sets, 600).mean(1)
        k10 = per_task(runs, range(600 * args.sets), 10, SET_SEED, "sample").reshape(args.sets, 600).mean(1)
        ratio = k5 / k10
        t5, t10 = THESIS_K5_K10[method]
        print(f"| {method} | {k5.min():.3f} - {k5.max():.3f} | {k10.min():.3f} - {k10.max():.3f} | "
              f"{ratio.min():.2f} - {ratio.max():.2f} | {t5:.2f} | {t5 / t10:.2f} |", flush=True)


if __name__ == "__main__":
    main()
