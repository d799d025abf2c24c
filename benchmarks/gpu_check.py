"""The GPU path, checked and timed on a machine with one NVIDIA GPU (run by hand where one is lent).

1. Same numbers: every few-shot rule's shard meta-gradient on CUDA equals the CPU one (float64,
   sine MLP and conv4 on synthetic 5-way images), largest relative difference printed.
2. Ray GPU workers: `sine_quick` (MT-net) trained on 2 Ray workers with ray.gpus_per_worker=0.5
   (CUDA tensors in the workers, the driver on CPU) against the same run in one CPU process: the
   workers' device and the largest relative parameter difference after the run.
3. Timings (CUDA, synchronised): conv4 5-way 1-shot meta-batch 32, the vmap-batched shard function
   against the per-task loop; MAML sine meta-batch 4, eager against torch.compile.

    PYTHONPATH=. python benchmarks/gpu_check.py [--iterations 300]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.core.meta_batch import InnerSettings, shard_meta_gradient  # noqa: E402
from pipeline.core.reference import loop_meta_gradient  # noqa: E402  (the per-task loop the tests check against)
from pipeline.core.rules import RULES  # noqa: E402
from pipeline.shards.compiled import CompiledShardFunction  # noqa: E402
from pipeline.shards.experiment import make_learner  # noqa: E402
from tasks import make_distribution  # noqa: E402
from tasks.sampling import sample_batch  # noqa: E402

DEV = "cuda"


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


CONV = ["task.name=synthetic_images", "task.ways=5", "task.shots=1", "task.query=15", "task.data=[]",
        "model.filters=64", "model.batch_norm=batch"]


def batch_for(cfg, learner, params, n, device, dtype):
    return sample_batch(make_distribution(cfg.task), seed=0, split="train", iteration=0, indices=range(n),
                        shots=cfg.task.shots, query=cfg.task.query, noise_shapes=learner.rule.noise_shapes(params),
                        dtype=dtype, device=device)


def to_dev(tree):
    return {k: to_dev(v) if isinstance(v, dict) else v.to(DEV) for k, v in tree.items()}


def rel(a: dict, b: dict) -> float:
    """Largest entry difference over the largest entry, over all tensors together: per tensor would
    divide rounding noise by zero-in-exact-arithmetic gradients (a conv bias before batch norm)."""
    diff = max((a[k].cpu() - b[k].cpu()).abs().max().item() for k in b)
    return diff / max(b[k].abs().max().item() for k in b)


def same_numbers() -> None:
    print("## 1. CUDA against CPU, float64, shard meta-gradient of 4 tasks\n")
    print("| method | sine MLP | conv4 5-way 1-shot |\n|---|---|---|")
    for method in sorted(m for m, r in RULES.items() if r.family == "few_shot"):
        cells = []
        for base, extra in (("sine_quick", []), ("omniglot_5w1s_cpu", CONV)):
            try:
                cfg = load_config(base, [f"method={method}", *extra])
            except Exception as e:  # a rule that has no such model (one line, not a failure of the check)
                cells.append(f"n/a ({str(e).splitlines()[0][:60]})")
                continue
            learner = make_learner(cfg)
            inner = InnerSettings(cfg.alpha, cfg.inner_steps, cfg.gumbel_temperature, "sample")
            params = learner.init_params(0, torch.float64)
            batch = batch_for(cfg, learner, params, 4, "cpu", torch.float64)
            cpu = shard_meta_gradient(learner, inner, params, batch)
            gpu = shard_meta_gradient(learner, inner, to_dev(params), to_dev(batch))
            cells.append(f"{rel(gpu.grads, cpu.grads):.1e}")
        print(f"| {method} | {' | '.join(cells)} |", flush=True)


def ray_gpu_workers(iterations: int) -> None:
    import ray

    from pipeline.driver.trainer import Trainer

    print(f"\n## 2. Ray workers on the GPU: sine_quick (MT-net), {iterations} iterations\n")
    common = [f"iterations={iterations}", "tracking.enabled=false", "eval.tasks=200", "train.compile=never"]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (("cpu, in process", ["backend=local"]),
                             ("2 Ray workers, 0.5 GPU each", ["backend=ray", "ray.workers=2", "ray.gpus_per_worker=0.5",
                                                             f"ray.cpus_per_worker={1 if DEV == 'cpu' else 2}"])):
            cfg = load_config("sine_quick", common + extra)
            t0 = time.perf_counter()
            with Trainer(cfg, Path(tmp) / label.replace(" ", "_"), log=lambda m: print("   ", m)) as tr:
                if label.startswith("2 Ray"):
                    print("    workers:", tr.backend.worker_info())
                tr.train()
                runs[label] = ({k: v.detach().clone() for k, v in tr.params.items()}, time.perf_counter() - t0)
            print(f"- {label}: {runs[label][1]:.1f} s including start-up", flush=True)
        if ray.is_initialized():
            ray.shutdown()
    (a, _), (b, _) = runs.values()
    print(f"- largest relative parameter difference, GPU workers vs CPU: {rel(b, a):.1e}")


def timed(fn, reps: int = 5) -> float:
    fn()
    sync()
    t = time.perf_counter()
    fn()
    sync()
    calls = max(1, int(0.2 / (time.perf_counter() - t)))
    out = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        out.append((time.perf_counter() - t) / calls)
    return statistics.median(out)


def timings() -> None:
    print("\n## 3. Timings on the GPU (median of 5 reps, synchronised)\n")
    print("| case | per-task loop ms | batched ms | batched / loop speed-up |\n|---|---|---|---|")
    for method in ("maml", "mtnet"):
        for chunk in (None, 16, 8):
            cfg = load_config("omniglot_5w1s_cpu", [f"method={method}", *CONV])
            learner = make_learner(cfg)
            inner = InnerSettings(cfg.alpha, cfg.inner_steps, cfg.gumbel_temperature, "sample")
            params = {k: v.to(DEV) for k, v in learner.init_params(0, torch.float32).items()}
            batch = batch_for(cfg, learner, params, 32, DEV, torch.float32)
            loop = timed(lambda: loop_meta_gradient(learner, inner, params, batch))
            vm = timed(lambda: shard_meta_gradient(learner, inner, params, batch, chunk))
            print(f"| conv4 5w1s {method}, meta-batch 32, tasks_per_vmap {chunk or 'all'} | {loop * 1e3:.1f} "
                  f"| {vm * 1e3:.1f} | {loop / vm:.2f}x |", flush=True)
    print("\n| case | eager ms | compiled ms | speed-up | compile s | max rel. grad diff |\n|---|---|---|---|---|---|")
    for label, name, overrides, shard in (("MAML sine meta-batch 4", "sine_maml", ["meta_batch_size=4"], 4),
                                          ("MT-net sine shard of 25", "sine_quick", [], 25)):
        cfg = load_config(name, overrides)
        learner = make_learner(cfg)
        inner = InnerSettings(cfg.alpha, cfg.inner_steps, cfg.gumbel_temperature, "sample")
        params = {k: v.to(DEV) for k, v in learner.init_params(0, torch.float32).items()}
        batch = batch_for(cfg, learner, params, shard, DEV, torch.float32)
        fn = CompiledShardFunction(learner, inner, log=lambda m: None)
        t0 = time.perf_counter()
        got = fn(params, batch)
        sync()
        compile_s = time.perf_counter() - t0
        want = shard_meta_gradient(learner, inner, params, batch)
        eager = timed(lambda: shard_meta_gradient(learner, inner, params, batch))
        comp = timed(lambda: fn(params, batch))
        note = " (fell back to eager)" if fn.eager else ""
        print(f"| {label}{note} | {eager * 1e3:.2f} | {comp * 1e3:.2f} | {eager / comp:.2f}x | {compile_s:.1f} "
              f"| {rel(got.grads, want.grads):.1e} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--parts", default="1,2,3")
    ap.add_argument("--cpu-dry-run", action="store_true")
    args = ap.parse_args()
    global DEV
    if args.cpu_dry_run:  # the script's own check on a machine without a GPU: "CUDA" is the CPU
        DEV = "cpu"
    elif not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible to torch")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if DEV == 'cuda' else 'cpu dry run'}\n")
    parts = args.parts.split(",")
    if "1" in parts:
        same_numbers()
    if "2" in parts:
        ray_gpu_workers(args.iterations)
    if "3" in parts:
        timings()


if __name__ == "__main__":
    main()
