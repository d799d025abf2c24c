"""The GPU path, checked and timed on a machine with one NVIDIA GPU (run by hand where one is lent).

1. Same numbers: every few-shot rule's shard meta-gradient on CUDA equals the CPU one (float64,
   sine MLP and conv4 on synthetic 5-way images), largest relative difference printed.
2. Ray GPU workers: `sine_quick` (MT-net) trained on 2 Ray workers with ray.gpus_per_worker=0.5
   (CUDA tensors in the workers, the driver on CPU) against the same run in one CPU process: the
   workers' device and the largest relative parameter difference after the run.
3. Timings (CUDA, synchronised): conv4 5-way 1-shot meta-batch 32, the vmap-batched shard function
   against the per-task loop; MAML sine meta-batch 4, eager against torch.compile.
4. Sampling on the device (task.sample_on): the tasks drawn on CUDA against numpy's (integers and
   images bitwise, floats within 1 ulp of float32), and the time per draw, numpy + copy against
   on the device, for a solo shard and for a population's draw.
5. Precision: conv4 5-way 1-shot meta-batch 32 (MAML, MT-net), ms per training shard (sampling
   included) in fp32, tf32 and bf16 eager, tf32 compiled with and without CUDA graphs, and as a
   fraction of FP32 peak (FLOPs counted by torch.utils.flop_counter on the same shard).
6. Populations on one GPU: sine populations (MAML, MT-net) at P = 100, 1,000, 10,000 in member-it/s
   and as a fraction of FP32 peak: step by step with tasks drawn by numpy, eager (as before); then
   tasks drawn on the device, step by step and the whole iteration as one function (pipeline/driver/
   population_step.py) eager, and under CUDA graphs (train.compile: graphs) the shard function
   replayed step by step against the whole iteration replayed - at 10,000 members MT-net's whole
   iteration compiled with and without graphs only (each such population takes about a minute to
   set up) - and 16 conv4 MAML members against one.
7. A packed sweep (4 alphas in one population) on a Ray shard worker with gpus_per_worker: 1,
   against the same sweep on a CPU worker: each member's evaluation.

    PYTHONPATH=. python benchmarks/gpu_check.py [--iterations 300] [--parts 1,...,7] [--sizes 100,1000,10000]

On a machine without a GPU, --cpu-dry-run runs every part on the CPU (small --sizes) to check the
script itself.
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


FP32_PEAK = {"H100": 67e12, "H200": 67e12, "A100": 19.5e12}  # dense FP32 (non-tensor-core), datasheets


def peak() -> float:
    name = torch.cuda.get_device_name() if DEV == "cuda" else ""
    return next((v for k, v in FP32_PEAK.items() if k in name), float("nan"))


def ulps32(a: torch.Tensor, b: torch.Tensor) -> int:
    ia, ib = (x.detach().cpu().to(torch.float32).view(torch.int32).to(torch.int64) for x in (a, b))
    ia, ib = (torch.where(i < 0, -(i & 0x7FFFFFFF), i) for i in (ia, ib))
    return int((ia - ib).abs().max())


def device_sampling() -> None:
    from tasks.sampling import sample_batch as draw

    print("\n## 4. Tasks drawn on the device against numpy's\n")
    print("| task | tasks | integers / images bitwise | floats: max ulp (float32) | numpy + copy ms | device ms |"
          "\n|---|---|---|---|---|---|")
    omniglot = ROOT.parent / "shared/data/omniglot/images_background_small1.zip"
    cases = [("sine", "sine_quick", [], 25), ("sine, a population's draw", "sine_quick", [], 4000),
             ("synthetic 5-way 1-shot", "omniglot_5w1s_cpu", CONV, 32)]
    if omniglot.is_file():
        cases.append(("Omniglot 5-way 1-shot", "omniglot_5w1s_cpu",
                      [f"task.data=[{omniglot}]", "task.split=character", "task.train_characters=100",
                       "task.query=15"], 32))
    for label, base, extra, n in cases:
        cfg = load_config(base, extra)
        dist = make_distribution(cfg.task)
        seeds = [i % 7 for i in range(n)]
        kw = dict(seed=seeds, split="train", iteration=3, indices=range(n), shots=cfg.task.shots, query=cfg.task.query,
                  noise_shapes={"l0.zeta": (40,)}, device=DEV)
        cpu, dev = draw(dist, **kw), draw(dist, **kw, on_device=True)
        exact = [k for k in cpu if k != "noise" and (not cpu[k].is_floating_point() or "5-way" in label)]
        exact = all(torch.equal(cpu[k].cpu(), dev[k].cpu()) for k in exact)  # labels; pixels of image tasks
        worst = max(ulps32(cpu[k], dev[k]) for k in cpu if k != "noise" and cpu[k].is_floating_point())
        worst = max(worst, ulps32(cpu["noise"]["l0.zeta"], dev["noise"]["l0.zeta"]))
        t_cpu, t_dev = timed(lambda: draw(dist, **kw)), timed(lambda: draw(dist, **kw, on_device=True))
        print(f"| {label} | {n} | {exact} | {worst} | {t_cpu * 1e3:.2f} | {t_dev * 1e3:.2f} |", flush=True)


def flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def precision() -> None:
    from pipeline.shards.experiment import Experiment

    print("\n## 5. Precision: conv4 5-way 1-shot, meta-batch 32, one training shard (sampling included)\n")
    print("| method | precision | compile | ms | GFLOP | fraction of FP32 peak |\n|---|---|---|---|---|---|")
    for method in ("maml", "mtnet"):
        work = None
        for prec, mode in (("fp32", "never"), ("tf32", "never"), ("bf16", "never"), ("tf32", "always"),
                           ("tf32", "graphs")):
            cfg = load_config("omniglot_5w1s_cpu", [f"method={method}", *CONV, "meta_batch_size=32",
                                                    f"train.precision={prec}", f"train.compile={mode}"])
            exp = Experiment(cfg, device=DEV)
            params = exp.init_params()
            step = lambda: exp.train_shard(params, 0, range(32))  # noqa: E731
            work = work or flops(step)  # the fp32 eager shard's FLOPs: the same arithmetic in every row
            t = timed(step)
            print(f"| {method} | {prec} | {mode} | {t * 1e3:.1f} | {work / 1e9:.1f} | {work / t / peak():.2%} |",
                  flush=True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def populations(sizes: list[int], iterations: int) -> None:
    from benchmarks.bench_population import member_cfgs, population_rate
    from pipeline.shards.experiment import Experiment

    print(f"\n## 6. Populations on one device ({iterations} iterations, the first third a warm-up)\n")
    print("| population | sampling | compile | iteration | member-it/s | fraction of FP32 peak |\n"
          "|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("maml", "mtnet"):
            cfg = load_config("sine_quick", [f"method={method}", "meta_batch_size=4", "train.compile=never"])
            exp = Experiment(cfg)
            per_iteration = flops(lambda: exp.train_shard(exp.init_params(), 0, range(4)))
            for size in sizes:
                # step by step with numpy's tasks and eager (the earlier path); then tasks drawn on the
                # device: step by step and the whole iteration eager, and under CUDA graphs the shard function alone
                # replayed (step by step) against the whole iteration replayed; from 10,000 members (a
                # minute of set-up per population) only the goal's cases: MT-net's whole iteration
                # compiled, with and without graphs
                cases = (("cpu", "never", False), ("device", "never", False), ("device", "never", True),
                         ("device", "graphs", False), ("device", "graphs", True))
                if size >= 10_000:
                    cases = (("device", "always", True), ("device", "graphs", True)) if method == "mtnet" else ()
                cfgs = member_cfgs(method, size, iterations, "never", Path(tmp)) if cases else []
                for sample_on, mode, whole in cases:
                    for c in cfgs:
                        c.task.sample_on, c.train.compile = sample_on, mode
                    rate, _ = population_rate(cfgs, Path(tmp) / f"{method}{size}{sample_on}{mode}{whole}",
                                              iterations // 3, device=DEV, whole=whole)
                    print(f"| sine {method} P={size} | {sample_on} | {mode} | {'whole' if whole else 'step by step'} "
                          f"| {rate:,.0f} | {rate * per_iteration / peak():.3%} |", flush=True)
        conv = ["method=maml", *CONV, "meta_batch_size=32", "train.compile=never"]
        for size in (1, 16):
            cfgs = [load_config("omniglot_5w1s_cpu", conv + [f"iterations={max(6, iterations // 10)}",
                                                            "backend=local", "tracking.enabled=false",
                                                            "train.plots=false", "train.log_every=1000",
                                                            "train.checkpoint_every=1000000000",
                                                            f"output_dir={tmp}", f"alpha={0.1 + 0.05 * i}",
                                                            f"run_name=c{size}_{i}"]) for i in range(size)]
            rate, _ = population_rate(cfgs, Path(tmp) / f"conv{size}", 2, device=DEV)
            print(f"| conv4 MAML 5w1s meta-batch 32, P={size} | auto | never | step by step | {rate:,.1f} | |",
                  flush=True)


SWEEP = """base: sine_quick
output_dir: {out}
set: {{iterations: {iterations}, eval.tasks: 100, train.compile: never, train.plots: false}}
space:
  alpha: {{grid: [0.003, 0.01, 0.03, 0.1]}}
resources: {{cpus: 1, workers: 1, cpus_per_worker: 1, gpus_per_worker: {gpus}}}
"""


def packed_sweep_on_ray_gpu_workers(iterations: int) -> None:
    """A packed sweep (4 alphas, one population) whose shard worker holds a GPU, against the same
    sweep on a CPU worker: each member's final evaluation."""
    import json

    import ray
    import yaml

    from pipeline.cli import main as metatrain

    print(f"\n## 7. A packed sweep on a Ray GPU worker (gpus_per_worker: 1), sine_quick, {iterations} iterations\n")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, gpus in (("gpu", 1 if DEV == "cuda" else 0), ("cpu", 0)):
            sweep = Path(tmp) / f"packed_{label}.yaml"
            sweep.write_text(SWEEP.format(out=Path(tmp) / label, iterations=iterations, gpus=gpus))
            t0 = time.perf_counter()
            code = metatrain(["sweep", str(sweep)])
            if ray.is_initialized():
                ray.shutdown()
            found = sorted((Path(tmp) / label).rglob("results.json"))
            results[label] = {yaml.safe_load((f.parent / "config.yaml").read_text())["alpha"]:
                              json.loads(f.read_text())["results"] for f in found}
            print(f"- {label} (gpus_per_worker {gpus}): exit {code}, {len(found)} member results, "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
    gpu, cpu = results["gpu"], results["cpu"]
    for alpha in sorted(cpu):
        a, b = cpu[alpha], gpu.get(alpha)
        k = sorted(a)[0]
        print(f"- member alpha={alpha}: K={k} query MSE cpu {a[k]['mean']:.5f}, "
              f"gpu {b[k]['mean'] if b else float('nan'):.5f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--parts", default="1,2,3,4,5,6,7")
    ap.add_argument("--sizes", default="100,1000,10000", help="part 6: sine population sizes")
    ap.add_argument("--cpu-dry-run", action="store_true")
    args = ap.parse_args()
    global DEV
    if args.cpu_dry_run:  # the script's own check on a machine without a GPU: "CUDA" is the CPU
        DEV = "cpu"
        CONV[CONV.index("model.filters=64")] = "model.filters=8"  # conv parts at a size a CPU runs in seconds
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
    if "4" in parts:
        device_sampling()
    if "5" in parts:
        precision()
    if "6" in parts:
        populations([int(n) for n in args.sizes.split(",")], max(30, args.iterations // 10))
    if "7" in parts:
        packed_sweep_on_ray_gpu_workers(max(50, args.iterations // 3))


if __name__ == "__main__":
    main()
