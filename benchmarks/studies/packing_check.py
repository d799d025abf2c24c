"""Why one config and seed can give two study numbers: float rounding, and what changes it.

Trains M-net members (sine_mnet, alpha 0.01, seeds 0-2) for a few hundred iterations as a
population of 3, as a population of 9 (beside alpha 0.04 and 0.1 members), and as a population of
3 in vectorised chunks of 2 tasks, and prints the largest relative parameter difference of the
alpha-0.01 members from the first. Packing leaves a member's arithmetic as it was; chunking
changes its float rounding, which 60,000 iterations then grow into a different trained model
(benchmarks/studies/README.md, "Packing and float rounding").

    python benchmarks/studies/packing_check.py [--iterations 300] [--compile never|always]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from pipeline.config import load_config  # noqa: E402
from pipeline.driver.population import Population  # noqa: E402


def train(alphas, chunk: int, iterations: int, compile_: str) -> dict:
    """The alpha-0.01 members' parameters (seeds 0-2) after training the whole population."""
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = [load_config("sine_mnet", {"iterations": iterations, "seed": s, "alpha": a, "tracking.enabled": False,
                                          "backend": "local", "train.plots": False, "train.compile": compile_,
                                          "eval.tasks": 10, "eval.shots": [10], "output_dir": tmp,
                                          "run_name": f"m{i}", "train.tasks_per_vmap": chunk})
                for i, (a, s) in enumerate((a, s) for a in alphas for s in range(3))]
        with Population(cfgs, [Path(tmp) / f"m{i}" for i in range(len(cfgs))], log=lambda m: None) as pop:
            pop.train()
            return {k: v[:3].clone() for k, v in pop.params.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--compile", default="never", choices=["never", "always"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    ref = train([0.01], 0, args.iterations, args.compile)
    for label, alphas, chunk in (("population of 9 (alpha 0.01, 0.04, 0.1), whole shard", [0.01, 0.04, 0.1], 0),
                                 ("population of 3, chunks of 2 tasks", [0.01], 2)):
        got = train(alphas, chunk, args.iterations, args.compile)
        diff = max(((got[k] - v).abs().max() / v.abs().max()).item() for k, v in ref.items())
        print(f"{label}: largest relative difference from the population of 3 (whole shard) after "
              f"{args.iterations} iterations, compile {args.compile}: {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
