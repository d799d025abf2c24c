"""Response time of a served adaptation model: one 5-way 1-shot Omniglot episode posted to
`mlflow models serve` (local env, 127.0.0.1), after start-up; median of --requests requests, beside
the same episode adapted in process (`pipeline.serve.serving.predict_episode`).

    python benchmarks/bench_serve.py [--run RUN_DIR] [--requests 20]

Without --run it trains a 5-way 1-shot Omniglot run for one iteration (omniglot_5w1s_cpu: conv4 with
64 filters, 3 inner steps at test; the response time depends on the network and the steps, not on
how long it was trained) on ../shared/data/omniglot. The episode is 5 characters of a test alphabet,
one drawer's PNG each as support and another's as query, straight from the zip (105x105, so each
request also decodes and resizes 10 images)."""
from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from pipeline.cli import main  # noqa: E402
from pipeline.serve.adaptation import load_run  # noqa: E402
from pipeline.serve.model_server import ModelServer as Server  # noqa: E402
from pipeline.serve.serving import predict_episode  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "omniglot"


def episode(ways: int = 5, alphabet: str = "Sanskrit") -> pd.DataFrame:
    zf = zipfile.ZipFile(DATA / "images_background_small2.zip")
    names = sorted(n for n in zf.namelist() if f"/{alphabet}/" in n and n.endswith(".png"))
    characters = sorted({n.split("/")[-2] for n in names})[:ways]
    rows = []
    for c in characters:
        files = sorted(n for n in names if n.split("/")[-2] == c)
        rows.append(("support", c, base64.b64encode(zf.read(files[0])).decode()))
        rows.append(("query", None, base64.b64encode(zf.read(files[1])).decode()))
    return pd.DataFrame(rows, columns=["role", "label", "image"]).sort_values("role", kind="stable",
                                                                           ascending=False, ignore_index=True)


def main_bench() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a finished 5-way 1-shot Omniglot run (default: train one for one iteration)")
    p.add_argument("--requests", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_dir = Path(args.run) if args.run else None
        if run_dir is None:
            data = f"[{DATA / 'images_background_small1.zip'},{DATA / 'images_background_small2.zip'}]"
            assert main(["train", "omniglot_5w1s_cpu", "--local", "--set", f"output_dir={tmp}", "--set", "run_name=r",
                         "--set", "iterations=1", "--set", "eval.tasks=10", "--set", "tracking.enabled=false",
                         "--set", f"task.data={data}"]) == 0
            run_dir = tmp / "r"
        assert main(["export", str(run_dir), "--out", str(tmp / "model")]) == 0
        ep = episode()
        run = load_run(run_dir)
        predict_episode(run, ep)  # warm
        t = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            local = predict_episode(run, ep)
            t.append(time.perf_counter() - t0)
        in_process = statistics.median(t)
        with Server(tmp / "model", tmp / "serve.log") as server:
            startup = server.wait()
            t0 = time.perf_counter()
            status, body = server.post(ep)
            first = time.perf_counter() - t0
            assert status == 200, body
            times = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                status, body = server.post(ep)
                times.append(time.perf_counter() - t0)
                assert status == 200, body
        served = pd.DataFrame(body["predictions"])
        assert (served["label"].to_numpy() == local["label"].to_numpy()).all()
        print(f"machine: {os.cpu_count()} CPU cores (shared); model: {run.cfg.method} conv4 {run.cfg.model.filters} "
              f"filters, {run.cfg.eval.inner_steps} inner steps, {run.ways}-way; episode: 5 support + 5 query PNGs "
              f"105x105")
        print(f"server start-up to /ping: {startup:.1f} s; first request: {first * 1000:.0f} ms")
        print(f"served episode, median of {len(times)}: {statistics.median(times) * 1000:.0f} ms "
              f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")
        print(f"same episode in process (predict_episode), median of {len(t)}: {in_process * 1000:.0f} ms")
        print(f"predicted: {list(served['label'])} (support labels {list(ep.loc[ep.role == 'support', 'label'])}, "
              f"query in the same order)")


if __name__ == "__main__":
    main_bench()
