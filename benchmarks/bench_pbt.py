"""A finding, not a requirement: Population Based Training over alpha and beta inside one population
of MT-nets on 10-shot sine against a random search of the same member-iterations.

Both sweeps draw the same 32 starting configurations (loguniform alpha in [1e-4, 1], loguniform beta
in [1e-4, 1e-2], sweep seed 11) and train them as one population for --iterations meta-iterations
(train.compile: always); the PBT sweep also ranks its members by val_loss every --interval
iterations and lets the bottom quarter copy the top quarter and explore alpha and beta (Tune's
defaults: resample probability 0.25, factors 0.8 / 1.2). Every run is evaluated on 2,000 test tasks
of an evaluation seed neither sweep trains or validates on. The two sweeps run at once, one core
each (`metatrain sweep`, real Ray, Tune and MLflow). Prints the best and the median run of each with
95% intervals, whether the two best intervals overlap, and the alpha / beta schedule of PBT's best
run; copies PBT's plots/pbt_schedules.png next to the log.

Usage: python benchmarks/bench_pbt.py [--members 32] [--iterations 60000] [--interval 5000] [--out DIR]
       python benchmarks/bench_pbt.py --summary DIR   (the tables again from a finished --out DIR, and the
                                                       five best runs of each sweep with their final values)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent


def sweep_file(out: Path, name: str, args, scheduler: dict | None) -> Path:
    spec = {"base": "sine_mtnet", "name": name, "output_dir": str(out), "seed": 11, "num_samples": args.members,
            "set": {"iterations": args.iterations, "train.compile": "always", "eval.tasks": 2000, "eval.shots": [10],
                    "eval.seed": 424242, "train.plots": False, "tracking.log_model": False,
                    "train.checkpoint_every": args.interval},
            "space": {"alpha": {"loguniform": [1e-4, 1.0]}, "beta": {"loguniform": [1e-4, 1e-2]}},
            "resources": {"cpus": 1, "workers": 0}, "pack": {"max_members": args.members},
            **({"scheduler": scheduler} if scheduler else {})}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def runs(sweep_dir: Path) -> list[dict]:
    out = []
    for t in json.loads((sweep_dir / "trials.json").read_text()).values():
        r = json.loads((sweep_dir / "trials" / t["name"] / "results.json").read_text())
        k10 = r["results"].get("10") or {}
        out.append({"name": t["name"], "start": t["config"], "final": t.get("final_values") or t["config"],
                    "lineage": t.get("lineage", []), "status": t["status"], "mean": k10.get("mean"),
                    "ci95": k10.get("ci95")})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=32)
    p.add_argument("--iterations", type=int, default=60000)
    p.add_argument("--interval", type=int, default=5000)
    p.add_argument("--out", default="")
    p.add_argument("--summary", default="", help="summarise a finished --out directory instead of running")
    args = p.parse_args()
    if args.summary:
        summarise(Path(args.summary), args)
        return
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_pbt_"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
          f"{args.members} MT-nets on 10-shot sine, {args.iterations} iterations, PBT every {args.interval}; out {out}",
          flush=True)
    pbt = {"name": "pbt", "perturbation_interval": args.interval, "quantile_fraction": 0.25,
           "resample_probability": 0.25, "perturbation_factors": [0.8, 1.2],
           "hyperparam_mutations": {"alpha": {"loguniform": [1e-4, 1.0]}, "beta": {"loguniform": [1e-4, 1e-2]}}}
    procs, t0 = {}, time.perf_counter()
    for name, scheduler in (("random", None), ("pbt", pbt)):
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(out / f"inductor-{name}")}
        log = open(out / f"{name}.log", "w")
        procs[name] = (subprocess.Popen([sys.executable, "-m", "pipeline.cli", "sweep",
                                         str(sweep_file(out, name, args, scheduler))], cwd=ROOT, env=env,
                                        stdout=log, stderr=subprocess.STDOUT), log)
    for name, (proc, log) in procs.items():
        code = proc.wait()
        log.close()
        print(f"  {name}: exit {code} after {time.perf_counter() - t0:.0f} s; its log: {out / f'{name}.log'}",
              flush=True)
        if code != 0:
            raise SystemExit((out / f"{name}.log").read_text()[-3000:])
    summarise(out, args)


def summarise(out: Path, args) -> None:
    results = {name: runs(out / name) for name in ("random", "pbt")}
    assert [r["start"] for r in results["random"]] == [r["start"] for r in results["pbt"]], "the same draws"
    print("\n| sweep | best run: start alpha, beta | final alpha, beta | MSE at K = 10 (95% CI) | median MSE | "
          "diverged |")
    print("|---|---|---|---|---|---|")
    best = {}
    for name, rs in results.items():
        done = [r for r in rs if r["mean"] is not None]
        b = best[name] = min(done, key=lambda r: r["mean"])
        print(f"| {name} | {b['start']['alpha']:.4g}, {b['start']['beta']:.4g} | {b['final']['alpha']:.4g}, "
              f"{b['final']['beta']:.4g} | {b['mean']:.4f} ± {b['ci95']:.4f} | "
              f"{statistics.median(r['mean'] for r in done):.4f} | {sum(r['status'] == 'diverged' for r in rs)} |")
    a, b = best["pbt"], best["random"]
    overlap = abs(a["mean"] - b["mean"]) <= a["ci95"] + b["ci95"]
    print(f"\nbest PBT run {'-' if a['mean'] < b['mean'] else '+'}{abs(a['mean'] - b['mean']):.4f} against the best "
          f"random-search run; 95% intervals overlap: {overlap}")
    exploits = sum(len(r["lineage"]) for r in results["pbt"])
    print(f"PBT: {exploits} exploits over {args.iterations // args.interval - (args.iterations % args.interval == 0)} "
          f"decisions")
    print(f"\nschedule of PBT's best run ({a['name']}): start alpha {a['start']['alpha']:.4g}, beta "
          f"{a['start']['beta']:.4g}")
    for e in a["lineage"]:
        print(f"  it {e['iteration']}: copied {e['donor']} -> alpha {e['new']['alpha']:.4g} ({e['ops'].get('alpha')}), "
              f"beta {e['new']['beta']:.4g} ({e['ops'].get('beta')})")
    for name, rs in results.items():
        done = sorted((r for r in rs if r["mean"] is not None), key=lambda r: r["mean"])
        print(f"\n{name}: the five best runs (final alpha, beta; exploits; MSE at K = 10)")
        for r in done[:5]:
            print(f"  {r['final']['alpha']:.4g}, {r['final']['beta']:.4g}; {len(r['lineage'])}; {r['mean']:.4f}")
        half = [r["final"]["alpha"] for r in done[:len(done) // 2]]
        print(f"  final alpha of the better half: median {statistics.median(half):.4g}, range {min(half):.4g} to "
              f"{max(half):.4g}; runs with MSE above 1.0: {sum(r['mean'] > 1.0 for r in done)}; worst "
              f"{done[-1]['mean']:.4f}")
    figure = out / "pbt" / "plots" / "pbt_schedules.png"
    if figure.is_file() and not args.summary:
        shutil.copy(figure, ROOT / "benchmarks" / "sweeps" / "pbt_schedules.png")
        print("figure: benchmarks/sweeps/pbt_schedules.png")


if __name__ == "__main__":
    main()
