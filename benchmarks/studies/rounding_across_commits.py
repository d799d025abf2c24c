"""Do two checkouts train a population to the same bits? (benchmarks/studies/README.md, "Packing and
float rounding".) Trains the config's seeds 0-2 as one population for a few hundred iterations under
each checkout's code (a subprocess per checkout, whole-shard vmap) and prints the largest relative
parameter difference.

    git worktree add /tmp/old 20ad862
    python benchmarks/studies/rounding_across_commits.py /tmp/old . --config sine_maml --compile always
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

TRAIN = """
import sys, tempfile, torch
from pathlib import Path
sys.path.insert(0, {repo!r})
torch.set_num_threads(1)
from pipeline.config import load_config
try:
    from pipeline.driver.population import Population
except ImportError:  # a checkout from before pipeline/ was grouped into wings
    from pipeline.population import Population
with tempfile.TemporaryDirectory() as tmp:
    cfgs = [load_config({config!r}, {{"iterations": {iterations}, "seed": s, "tracking.enabled": False,
            "backend": "local", "train.plots": False, "train.compile": {compile!r}, "eval.tasks": 10,
            "eval.shots": [10], "output_dir": tmp, "run_name": f"m{{s}}", "train.tasks_per_vmap": 0}})
            for s in range(3)]
    with Population(cfgs, [Path(tmp) / f"m{{s}}" for s in range(3)], log=lambda m: None) as pop:
        pop.train()
        torch.save({{k: v.clone() for k, v in pop.params.items()}}, {out!r})
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repos", nargs=2, type=Path)
    ap.add_argument("--config", default="sine_maml")
    ap.add_argument("--compile", default="always", choices=["never", "always"])
    ap.add_argument("--iterations", type=int, default=300)
    args = ap.parse_args()
    params = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, repo in enumerate(args.repos):
            out = str(Path(tmp) / f"{i}.pt")
            code = TRAIN.format(repo=str(repo.resolve()), config=args.config, iterations=args.iterations,
                                compile=args.compile, out=out)
            subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp,
                           env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / f"inductor{i}")})
            params.append(torch.load(out, weights_only=True))
    a, b = params
    diff = max(((a[k] - b[k]).abs().max() / a[k].abs().max()).item() for k in a)
    print(f"{args.config}, compile {args.compile}, {args.iterations} iterations: largest relative difference "
          f"{diff:.2e} between {args.repos[0]} and {args.repos[1]}")


if __name__ == "__main__":
    main()
