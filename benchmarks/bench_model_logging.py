"""What logging a run's two models to MLflow costs a fresh process (as each `metatrain train` is),
side by side for two code trees on one machine, the trees taking turns.

Each child trains sine_quick for one iteration in process (untracked, no plots), opens an MLflow
store and run, then times what the tracker does for the models: its preparation while the run
trains (`_prepare_model_logging`, where the tree has one) and the two logs (the network, a
torch.export; the adapt pyfunc model). The store is opened before timing, so MLflow's import is
not counted in the total; it is shown beside it (after torch's, as in a run), with the package scan
that MLflow's requirement check makes uncached. The median of the repeats is shown.

    python benchmarks/bench_model_logging.py --before /tmp/before [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(out: str) -> None:
    t0 = time.perf_counter()
    import torch  # noqa: F401 - first, as in a run: MLflow's import below is its own share

    t1 = time.perf_counter()
    import mlflow  # noqa: F401
    from mlflow import MlflowClient  # noqa: F401

    imports = {"import torch": t1 - t0, "import mlflow": time.perf_counter() - t1}
    import importlib_metadata

    t0 = time.perf_counter()
    importlib_metadata.packages_distributions()  # what MLflow's requirement check scans (uncached)
    imports["package scan"] = time.perf_counter() - t0
    from pipeline import tracking
    from pipeline.config import load_config
    from pipeline.driver.trainer import Trainer

    work = Path(tempfile.mkdtemp(prefix="bench-models-"))
    cfg = load_config("sine_quick", ["iterations=1", "eval.tasks=10", "backend=local", f"output_dir={work}",
                                     "tracking.enabled=false", "train.plots=false"])
    with Trainer(cfg, work / "r", log=lambda m: None) as t:
        t.train()
        record = t.record
    uri = tracking.resolve_uri(None, work)
    client = tracking.client_for(uri)
    run_id = client.create_run(tracking.ensure_experiment(uri, "bench")).info.run_id
    times = {}
    t0 = time.perf_counter()
    if hasattr(tracking, "_prepare_model_logging"):
        tracking._prepare_model_logging()
    times["prepare"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tracking.log_model(uri, run_id, record)
    times["network"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tracking.log_adapt_model(uri, run_id, record)
    times["adapt model"] = time.perf_counter() - t0
    times["total"] = sum(times.values())
    times.update(imports)  # not in the total: paid by every tracked run of either tree
    Path(out).write_text(json.dumps(times))


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="a checkout of an older commit (run with this environment)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    trees = {"before": Path(args.before).resolve(), "after": ROOT}
    home = tempfile.mkdtemp(prefix="bench-models-home-")  # one home: each tree's caches as on a used machine
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}", flush=True)
    got = {label: [] for label in trees}
    for i in range(args.repeats + 1):  # the first round fills each tree's caches in the home: not counted
        for label, tree in trees.items():
            out = Path(tempfile.mkdtemp()) / "t.json"
            env = {**os.environ, "METATRAIN_HOME": home, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(out)], cwd=tree, env=env,
                           check=True, capture_output=True)
            times = json.loads(out.read_text())
            print(f"  {'warm-up' if i == 0 else f'round {i}'} {label}: " +
                  ", ".join(f"{k} {v:.3f} s" for k, v in times.items()), flush=True)
            if i:
                got[label].append(times)
    print(f"\nmedian of {args.repeats} (seconds)\n| tree | prepare | network | adapt model | total | import torch | "
          "import mlflow | package scan |\n|---|---|---|---|---|---|---|---|")
    for label, runs in got.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"| {label} ({trees[label]}) | " + " | ".join(f"{med[k]:.3f}" for k in (
            "prepare", "network", "adapt model", "total", "import torch", "import mlflow", "package scan")) + " |")
    ratio = statistics.median(r["total"] for r in got["after"]) / statistics.median(r["total"] for r in got["before"])
    print(f"\nafter / before, total: {ratio:.2f}x\ndate: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
