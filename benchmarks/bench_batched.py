"""Meta-training throughput: the vmap-batched shard function vs the per-task autograd loop.

Both paths compute the same thing (summed query loss after adaptation and its second-order
meta-gradient) for the same model and the same tasks, without the query-loss curve (which training
computes on 10 iterations per log window only, curve_at); they are timed interleaved in one
run so machine noise hits both alike. Usage:

    python benchmarks/bench_batched.py [--reps 10] [--conv-batch 32] [--methods maml,mtnet] [--shipped omniglot_5w1s]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace

import torch

from pipeline.config import load_config
from pipeline.core.learners import conv4, mlp
from pipeline.core.meta_batch import InnerSettings, Learner, shard_meta_gradient
from pipeline.core.reference import loop_meta_gradient  # the per-task baseline the tests check batching against
from pipeline.core.rules import get_rule
from pipeline.shards.chunking import pick_chunk_size, time_chunk_sizes
from pipeline.shards.experiment import make_learner
from tasks import image_format
from tasks.regression import Sinusoid
from tasks.sampling import sample_batch
from tasks.synthetic import SyntheticImages


def bench(name, learner, inner, batch_fn, n_tasks, reps, chunk=None):
    """chunk: tasks per vmap call (None: the whole shard; "auto": chosen as a run's
    train.tasks_per_vmap: auto chooses it, by timing every choice on this shard)."""
    params = learner.init_params(0)
    batch = batch_fn(learner, params)
    if chunk == "auto":
        chunk = pick_chunk_size(time_chunk_sizes(lambda c: shard_meta_gradient(learner, inner, params, batch, c),
                                                 n_tasks)) or None
        name += f", auto -> {chunk or 'whole'}"
    paths = {"batched": lambda: shard_meta_gradient(learner, inner, params, batch, chunk),
             "loop": lambda: loop_meta_gradient(learner, inner, params, batch)}
    times = {k: [] for k in paths}
    calls = {}
    for k, fn in paths.items():  # warm-up, and enough calls per rep for >= 0.2 s (timer noise)
        fn()
        t = time.perf_counter()
        fn()
        calls[k] = max(1, int(0.2 / (time.perf_counter() - t)))
    for _ in range(reps):
        for k, fn in paths.items():
            t = time.perf_counter()
            for _ in range(calls[k]):
                fn()
            times[k].append((time.perf_counter() - t) / calls[k])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{name:<34} {n_tasks:>5} {n_tasks / med['loop']:>12.1f} {n_tasks / med['batched']:>14.1f} "
          f"{med['loop'] / med['batched']:>8.2f}x", flush=True)
    return med["loop"] / med["batched"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--sine-batch", type=int, default=25)
    ap.add_argument("--conv-batch", type=int, default=32)
    ap.add_argument("--methods", default="maml,fomaml,tnet,mtnet,metasgd,mc2")
    ap.add_argument("--conv-methods", default="maml,mtnet")
    ap.add_argument("--shipped", default="", help="shipped image configs to time as they train, e.g. "
                    "omniglot_5w1s,miniimagenet_5w1s (their shard on synthetic images of the same shape)")
    args = ap.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, "
          f"median of {args.reps} interleaved reps")
    print(f"{'model / method':<34} {'tasks':>5} {'loop tasks/s':>12} {'batched tasks/s':>14} {'speed-up':>9}")
    sine = Sinusoid()
    for m in filter(None, args.methods.split(",")):
        learner = Learner(mlp(1, [40, 40], 1), get_rule(m))
        bench(f"sine MLP 1-40-40-1, {m}", learner, InnerSettings(0.01, 1, curve=False),
              lambda l, p: sample_batch(sine, seed=0, split="train", iteration=0, indices=range(args.sine_batch),
                                        shots=10, query=10, noise_shapes=l.rule.noise_shapes(p)),
              args.sine_batch, args.reps)
    images = SyntheticImages(ways=5)  # timing only: pixel values don't matter
    for m in filter(None, args.conv_methods.split(",")):
        for chunk in (None, 8, "auto"):
            learner = Learner(conv4(1, 5, 28, filters=64), get_rule(m))
            label = f"conv4-64 28x28 5w1s q15, {m}" + (f", chunk {chunk}" if chunk not in (None, "auto") else "")
            bench(label, learner, InnerSettings(0.4, 1, curve=False),
                  lambda l, p: sample_batch(images, seed=0, split="train", iteration=0, indices=range(args.conv_batch),
                                            shots=1, query=15, noise_shapes=l.rule.noise_shapes(p)),
                  args.conv_batch, max(3, args.reps // 3), chunk)
    for name in filter(None, args.shipped.split(",")):
        shipped(name, max(3, args.reps // 3))


def shipped(name: str, reps: int) -> None:
    """A shipped image config's shard as a run of it trains it (method, network, ways, shots, query,
    inner steps, meta-batch, train.tasks_per_vmap as the config sets it, auto by default), on
    synthetic images of its shape: timing only."""
    cfg = load_config(name, local=False)  # its data need not be here: the images are synthetic
    channels, size = image_format(cfg.task)
    images = SyntheticImages(ways=cfg.task.ways, image_size=size, channels=channels)
    chunk = cfg.train.tasks_per_vmap or None  # "auto", or a number (0: the whole shard)
    inner = InnerSettings(cfg.alpha, cfg.inner_steps, curve=False)
    learner = make_learner(cfg)
    batch_fn = lambda l, p: sample_batch(  # noqa: E731
        images, seed=0, split="train", iteration=0, indices=range(cfg.meta_batch_size), shots=cfg.task.shots,
        query=cfg.task.query, noise_shapes=l.rule.noise_shapes(p))
    bench(f"{name} (mb {cfg.meta_batch_size})", learner, inner, batch_fn, cfg.meta_batch_size, reps, chunk)
    # What the query-loss curve (a query forward per inner step) adds to an iteration that computes it.
    params = learner.init_params(0)
    batch = batch_fn(learner, params)
    med = {}
    for curve in (False, True, False, True):
        t0 = time.perf_counter()
        shard_meta_gradient(learner, replace(inner, curve=curve), params, batch)
        med.setdefault(curve, []).append(time.perf_counter() - t0)
    without, with_ = min(med[False]), min(med[True])
    print(f"{'':<34} whole shard with the query-loss curve {with_ * 1e3:.0f} ms vs without {without * 1e3:.0f} ms: "
          f"the curve is {1 - without / with_:.0%} of an iteration that computes it", flush=True)


if __name__ == "__main__":
    main()
