"""Tuning sweeps at population speed, end to end (`metatrain sweep`, a real local Ray and Tune, the
MLflow SQLite store), measured side by side in one run on this machine:

  1. random search: `num_samples` loguniform alpha draws of MT-net on 10-shot sine (5,000
     iterations, train.compile: always, 2,000 test tasks), packed (populations of
     `--members`) against one Tune trial per run (pack.max_members: 0): the same drawn runs.
  2. the same packed sweep with scheduler halving (reduction factor 3, grace period 500) against
     without: wall time, and the best run's post-adaptation MSE at K = 10 on the 2,000 test tasks
     with its 95% interval.

Each sweep writes into a fresh folder under --out, with an empty Inductor cache of its own (every
case compiles cold); the wall time is the `run_sweep` call's, Ray's start included.
Usage:  python benchmarks/bench_sweeps.py [--samples 48] [--iterations 5000] [--members 24] [--grace 500]
                                         [--cases unpacked,packed,packed+halving] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.sweeps.driver import run_sweep  # noqa: E402


def sweep_file(out: Path, name: str, args, **fields) -> Path:
    spec = {"base": "sine_mtnet", "name": name, "output_dir": str(out), "seed": 7, "num_samples": args.samples,
            "set": {"iterations": args.iterations, "train.compile": "always", "eval.tasks": 2000, "eval.shots": [10],
                    "eval.seed": 987654, "train.plots": False, "tracking.log_model": False},
            "space": {"alpha": {"loguniform": [1e-4, 1.0]}}, "resources": {"cpus": 1, "workers": 0}, **fields}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run(path: Path, out: Path, name: str) -> tuple[float, dict]:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(out / f"inductor-{name}")  # Ray's trial processes inherit it
    t0 = time.perf_counter()
    code = run_sweep(str(path), log=lambda m: print(f"  {m}", flush=True))
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"{name}: metatrain sweep exited {code}")
    manifest = json.loads((out / name / "trials.json").read_text())
    runs = {}
    for t in manifest.values():
        results = out / name / "trials" / t["name"] / "results.json"
        r = json.loads(results.read_text()) if results.is_file() else {}
        runs[t["config"]["alpha"]] = (t["status"], (r.get("results") or {}).get("10"))
    return wall, runs


def best(runs: dict) -> tuple[float, float, float]:
    """(alpha, mean, ci95) of the finished run with the lowest MSE at K = 10."""
    done = [(a, r["mean"], r["ci95"]) for a, (s, r) in runs.items() if r and r["mean"] is not None]
    return min(done, key=lambda x: x[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=48)
    p.add_argument("--iterations", type=int, default=5000)
    p.add_argument("--members", type=int, default=24, help="pack.max_members (2 cores: two populations at once)")
    p.add_argument("--grace", type=int, default=500, help="halving's grace period (iterations)")
    p.add_argument("--cases", default="unpacked,packed,packed+halving", help="which sweeps to run (comma-separated)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_sweeps_"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
          f"{args.samples} loguniform alpha draws of MT-net sine, {args.iterations} iterations each; out {out}",
          flush=True)
    cases = {"unpacked": {"pack": {"max_members": 0}},
             "packed": {"pack": {"max_members": args.members}},
             "packed+halving": {"pack": {"max_members": args.members},
                                "scheduler": {"name": "halving", "reduction_factor": 3, "grace_period": args.grace}}}
    cases = {k: v for k, v in cases.items() if k in args.cases.split(",")}
    walls, runs = {}, {}
    for name, fields in cases.items():
        print(f"\n== {name}", flush=True)
        walls[name], runs[name] = run(sweep_file(out, name, args, **fields), out, name)
        print(f"  {name}: {walls[name]:.1f} s", flush=True)
    assert len({frozenset(r) for r in runs.values()}) == 1, "the same drawn runs"
    ratio = lambda base, name: f"{walls[base] / walls[name]:.2f}x" if base in walls else "-"  # noqa: E731
    print("\n| sweep | wall s | vs unpacked | vs packed | best alpha | best MSE at K = 10 (95% CI) | runs finished |")
    print("|---|---|---|---|---|---|---|")
    for name in cases:
        a, m, ci = best(runs[name])
        done = sum(s in ("completed", "diverged") for s, _ in runs[name].values())
        print(f"| {name} | {walls[name]:.1f} | {ratio('unpacked', name)} | {ratio('packed', name)} | {a:.4g} | "
              f"{m:.4f} ± {ci:.4f} | {done} of {len(runs[name])} |")
    if not {"packed", "packed+halving"} <= set(runs):
        return
    (_, m0, c0), (_, m1, _) = best(runs["packed"]), best(runs["packed+halving"])
    print(f"\nhalving's best within the no-halving best's 95% interval: {abs(m1 - m0) <= c0} "
          f"(|{m1:.4f} - {m0:.4f}| = {abs(m1 - m0):.4f}, interval half-width {c0:.4f})")


if __name__ == "__main__":
    main()
