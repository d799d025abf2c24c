"""Populations: member-iterations per second, a packed population against solo trials as they run
today, side by side in one process on one thread (sine MLP 1-40-40-1, meta-batch 4, K=10).

"solo" is the ordinary Trainer's outer loop (LocalBackend, eager; sampling, Adam, metrics
and the final checkpoint included), and one solo trial compiled (train.compile, as a 60,000-iteration
trial runs today under `auto`; its compilation excluded); "population" is pipeline/driver/population.py's loop over P
members
that differ in alpha and seed (as in the robustness study: 6 alphas per seed), eager and under
torch.compile (its compile time reported apart, then excluded; "compile s" is the first round's,
with the Inductor cache the command starts with). Evaluation and plots, the same for
both, are left out. Every case runs once per round, rounds interleaved (`--repeats`), and rates are
the rounds' medians: the 2-core machine's speed drifts by +-15% over minutes.

A second table times the population's task sampling per iteration (tasks/sampling.py, one
counter-based draw for every member's tasks) against the per-task numpy Generators it replaced
(reproduced below), for the members' seeds as above and for P distinct seeds, and gives each as a
share of the eager population iteration (its time without sampling, plus the sampling). Usage:

    python benchmarks/bench_population.py [--iterations 300] [--sizes 18,100] [--methods maml,mtnet] [--repeats 3]
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_config  # noqa: E402
from pipeline.driver.population import Population  # noqa: E402
from pipeline.driver.trainer import Trainer  # noqa: E402

ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def member_cfgs(method: str, size: int, iterations: int, compile_: str, out: Path) -> list:
    base = {"method": method, "meta_batch_size": 4, "iterations": iterations, "backend": "local",
            # log_every as the shipped sine configs: the query-loss curve (eager, curve_at) on 1% of iterations
            "tracking.enabled": False, "train.plots": False, "train.log_every": 1000,
            "train.checkpoint_every": 10**9, "train.compile": compile_, "output_dir": str(out)}
    return [load_config("sine_quick", {**base, "alpha": ALPHAS[i % len(ALPHAS)], "seed": i // len(ALPHAS),
                                       "run_name": f"m{i}"}) for i in range(size)]


def compile_lines(message: str) -> None:
    """Runs log nothing here but train.compile's lines (a fallback to eager must show)."""
    if message.startswith("train.compile"):
        print(message, flush=True)


def solo_rate(cfg, out: Path, warmup: int = 0) -> float:
    """Iterations/s of one solo run's outer loop, after `warmup` iterations (a compiled run's
    compilation) run as a run of their own length."""
    torch._dynamo.reset()  # each case its own compiled graphs (Dynamo allows 8 per code object and process)
    with Trainer(cfg, out, log=compile_lines) as t:
        t.begin()
        if warmup:
            total, cfg.iterations = cfg.iterations, warmup
            t._loop()
            cfg.iterations, t.record.status = total, "running"
        t0 = time.perf_counter()
        t._loop()
        return (cfg.iterations - warmup) / (time.perf_counter() - t0)


def population_rate(cfgs, out: Path, warmup: int, device: str = "cpu",
                    whole: bool | None = None) -> tuple[float, float]:
    """(member-iterations/s after `warmup` iterations, seconds of the warm-up: compilation); whole:
    Population's whole_iteration (None: where compiled and tasks are drawn on the device)."""
    torch._dynamo.reset()
    with Population(cfgs, [out / f"m{i}" for i in range(len(cfgs))], log=compile_lines, device=device,
                    whole_iteration=whole) as pop:
        for m in pop.members:
            m.begin()
        pop.stacked.start(pop.shards.experiment.plan.compile, pop.scheduler.stops_members, pop.log)
        total = cfgs[0].iterations
        for m in pop.members:  # the warm-up as a run of its own length, then the timed rest
            m.cfg.iterations = warmup
        t0 = time.perf_counter()
        pop.base.iterations = warmup
        pop._loop()
        warm_s = time.perf_counter() - t0
        for m in pop.members:
            m.cfg.iterations, m.status = total, "running"
        pop.base.iterations = total
        t0 = time.perf_counter()
        pop._loop()
        return (total - warmup) * len(cfgs) / (time.perf_counter() - t0), warm_s


def per_task_generators(seeds, size: int, iteration: int, shots: int, query: int, noise_shapes: dict) -> dict:
    """The sampling path before the counter-based generator (commit ceb9874's tasks/sampling.py and
    tasks/regression.py): one numpy Generator per task and stream, sine tasks drawn one at a time."""
    tasks = []
    for seed in seeds:
        for index in range(size):
            rng = np.random.default_rng([seed, 0, iteration, index, 0])
            a, w, b = rng.uniform(0.1, 5.0), rng.uniform(0.8, 1.2), rng.uniform(0.0, np.pi)
            xq, xs = rng.uniform(-5, 5, (query, 1)), rng.uniform(-5, 5, (shots, 1))
            noise_rng = np.random.default_rng([seed, 0, iteration, index, 1])
            noise = {k: np.subtract(*noise_rng.gumbel(size=(2, *s))) for k, s in sorted(noise_shapes.items())}
            tasks.append({"x_support": xs, "y_support": a * np.sin(w * xs + b), "x_query": xq,
                          "y_query": a * np.sin(w * xq + b), "noise": noise})
    stack = lambda key: torch.as_tensor(np.stack([t[key] for t in tasks]), dtype=torch.float32)  # noqa: E731
    return {**{k: stack(k) for k in ("x_support", "y_support", "x_query", "y_query")},
            "noise": {k: torch.as_tensor(np.stack([t["noise"][k] for t in tasks])) for k in noise_shapes}}


def sampling_times(cfgs, out: Path, reps: int = 128) -> tuple[float, float]:
    """Seconds per iteration to sample every member's batch: (counter-based, drawn ahead in blocks of
    iterations as the population does - `reps` covers whole blocks -, per-task generators)."""
    with Population(cfgs, [out / f"m{i}" for i in range(len(cfgs))], log=lambda m: None) as pop:
        first = pop.members[0]
        shapes = first.experiment.noise_shapes(first.params)
        seeds = sorted({c.seed for c in cfgs})
        t0 = time.perf_counter()
        for it in range(reps):
            pop.shards.sample(it, range(cfgs[0].meta_batch_size))  # PopulationShards.sample
        new = (time.perf_counter() - t0) / reps
        t0 = time.perf_counter()
        for it in range(reps):
            per_task_generators(seeds, cfgs[0].meta_batch_size, it, cfgs[0].task.shots, cfgs[0].task.query, shapes)
        return new, (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--sizes", default="18,100")
    ap.add_argument("--methods", default="maml,mtnet")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds of every case, interleaved (rates are their medians: a shared machine drifts)")
    ap.add_argument("--solo-trials", type=int, default=1, help="solo trials timed per round")
    ap.add_argument("--device", default="cpu", help="where the population trains (cuda: one GPU); solo runs: CPU")
    ap.add_argument("--no-compile", action="store_true", help="eager population only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, 1 thread, {platform.machine()}; population on {where}; {args.iterations} "
          f"iterations per run, sine 1-40-40-1, meta-batch 4, K=10; medians of {args.repeats} interleaved rounds "
          f"(range in brackets)\n")
    sizes = [int(s) for s in args.sizes.split(",")]
    iteration_s, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for method in args.methods.split(","):
            rates: dict = {}  # case -> rates over the rounds
            for r in range(args.repeats):
                def add(case, rate):
                    rates.setdefault(case, []).append(rate)

                for i, c in enumerate(member_cfgs(method, args.solo_trials, args.iterations, "never", tmp)):
                    add("solo", solo_rate(c, tmp / f"solo-{method}-{r}-{i}"))
                if not args.no_compile:
                    add("solo_c", solo_rate(member_cfgs(method, 1, args.iterations, "always", tmp)[0],
                                            tmp / f"solo-c-{method}-{r}", warmup=5))
                for size in sizes:
                    out = tmp / f"e{size}{method}{r}"
                    add(("eager", size), population_rate(member_cfgs(method, size, args.iterations, "never", out), out,
                                                         warmup=5, device=args.device)[0])
                    if not args.no_compile:
                        out = tmp / f"c{size}{method}{r}"
                        rate, compile_s = population_rate(member_cfgs(method, size, args.iterations, "always", out),
                                                          out, warmup=5, device=args.device)
                        add(("compiled", size), rate)
                        add(("compile_s", size), compile_s)
            med = {k: float(np.median(v)) for k, v in rates.items()}
            cell = lambda k: f"{med[k]:,.0f} [{min(rates[k]):,.0f}-{max(rates[k]):,.0f}]" if k in med else "-"  # noqa: E731
            nan = float("nan")
            for size in sizes:
                comp = med.get(("compiled", size), nan)
                rows.append(f"| {method} | {size} | {cell('solo')} | {cell('solo_c')} | {cell(('eager', size))} | "
                            f"{med[('eager', size)] / med['solo']:.1f}x | {cell(('compiled', size))} | "
                            f"{comp / med['solo']:.1f}x | {comp / med.get('solo_c', nan):.1f}x | "
                            f"{max(rates.get(('compile_s', size), [nan])):.0f} |")
                iteration_s[method, size] = size / med[("eager", size)]
        print("\n| method | P | solo it/s (one trial, eager) | solo compiled it/s | population eager member-it/s | "
              "speed-up | population compiled member-it/s | speed-up | vs solo compiled | compile s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows), flush=True)
        print("\nTask sampling per population iteration (ms), and its share of the eager iteration:\n")
        print("| method | P | seeds | counter-based ms | share | per-task generators ms | share | speed-up |")
        print("|---|---|---|---|---|---|---|---|")
        for (method, size), it_s in iteration_s.items():
            cfgs = member_cfgs(method, size, args.iterations, "never", tmp / "s")
            compute_s = None  # the eager iteration without its sampling: the first row's iteration less its sampling
            one_seed_each = [replace(c, seed=i) for i, c in enumerate(cfgs)]
            for label, seeded in (("as above", cfgs), ("one per member", one_seed_each)):
                new, old = sampling_times(seeded, tmp / f"s{method}{size}{label[0]}")
                compute_s = it_s - new if compute_s is None else compute_s
                print(f"| {method} | {size} | {len({c.seed for c in seeded})} ({label}) | {new * 1e3:.2f} | "
                      f"{new / (compute_s + new):.0%} | {old * 1e3:.2f} | {old / (compute_s + old):.0%} | "
                      f"{old / new:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
