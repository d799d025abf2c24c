"""Omniglot task sampling from a packed Arrow file against PNG folders, side by side.

Each way of reading the data runs in a fresh process (as a new Ray worker would) and reports its
start-up time (until the first task is ready), its sampling throughput and its resident memory:
  png per task     read and decode every PNG a task needs (what per-task loaders of the reference
                   code do); no start-up cost, paid again on every task
  png at start     decode the whole folder into memory at start-up (tasks.images.read_alphabets)
  arrow mmap       memory-map the file written by `metatrain data pack` (tasks.images.read_packed):
                   no decoding, pixels shared through the page cache by every worker of a node
Usage:  python benchmarks/bench_sampling.py [--data ../shared/data/omniglot] [--tasks 2000] [--ways 5] [--query 15]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

VARIANTS = ("png per task", "png at start", "arrow mmap")


def child(variant: str, folder: str, packed: str, n_tasks: int, ways: int, shots: int, query: int) -> dict:
    import psutil

    from tasks.images import FewShotImages, FileImages, ImageSet, decoder, read_alphabets, read_packed
    from tasks.sampling import DATA_STREAM, Streams

    t0 = time.perf_counter()
    if variant == "png per task":
        unique = {p.parts[-3:]: p for p in sorted(Path(folder).rglob("*.png"))}  # an archive overlap read once
        paths = [unique[k] for k in sorted(unique)]
        classes = np.array([f"{p.parts[-3]}/{p.parts[-2]}" for p in paths])
        files = FileImages([str(p) for p in paths], decoder(28, 1, invert=True), cache_size=0)
        data = ImageSet(files, classes, np.array([p.parts[-3] for p in paths]), (28, 28, 1))
    elif variant == "png at start":
        data = read_alphabets([folder], 28)
    else:
        data = read_packed(packed, "omniglot", 28)
    dist = FewShotImages(data, {"train": sorted(data.class_index())}, ways=ways, rotations=True)
    dist.sample(Streams(0, "train", 0, [0], DATA_STREAM), shots, query)
    startup = time.perf_counter() - t0
    t1 = time.perf_counter()
    for i in range(n_tasks):  # one task at a time, as the per-task loaders read them
        dist.sample(Streams(0, "train", 1, [i], DATA_STREAM), shots, query)
    rate = n_tasks / (time.perf_counter() - t1)
    # USS: memory no other process shares (pages of a memory-mapped file are shared, page cache)
    return {"startup_s": startup, "tasks_per_s": rate, "uss_mb": psutil.Process().memory_full_info().uss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/omniglot"))
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--query", type=int, default=15)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--packed", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.packed, args.tasks, args.ways, args.shots, args.query)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder, packed = Path(tmp) / "png", Path(tmp) / "omniglot.arrow"
        zips = sorted(Path(args.data).glob("*.zip"))
        for z in zips:
            zipfile.ZipFile(z).extractall(folder)
        subprocess.run([sys.executable, "-m", "pipeline.cli", "data", "pack", "omniglot", "--src", str(folder),
                        "--out", str(packed)], check=True, capture_output=True)
        n_png = len(list(folder.rglob("*.png")))
        results = {v: [] for v in VARIANTS}
        for _ in range(args.reps):  # interleaved, rep by rep, so machine noise hits every variant alike
            for v in VARIANTS:
                out = subprocess.run([sys.executable, __file__, "--child", v, "--folder", str(folder), "--packed",
                                      str(packed), "--tasks", str(args.tasks), "--ways", str(args.ways),
                                      "--shots", str(args.shots), "--query", str(args.query)],
                                     check=True, capture_output=True, text=True)
                results[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch

    print(f"Omniglot ({', '.join(z.name for z in zips)}: {n_png} PNGs; packed {packed.name}), {args.ways}-way "
          f"{args.shots}-shot, {args.query} query/class ({args.ways * (args.shots + args.query)} images/task), "
          f"{args.tasks} tasks per process, median of {args.reps} fresh processes; torch {torch.__version__}")
    print(f"{'variant':<14}{'start-up s':>12}{'tasks/s':>10}{'USS MiB':>9}{'  tasks/s vs arrow':>19}")
    med = {v: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for v, rs in results.items()}
    for v in VARIANTS:
        m = med[v]
        print(f"{v:<14}{m['startup_s']:>12.2f}{m['tasks_per_s']:>10,.0f}{m['uss_mb']:>9.0f}"
              f"{m['tasks_per_s'] / med['arrow mmap']['tasks_per_s']:>18.2f}x")


if __name__ == "__main__":
    main()
