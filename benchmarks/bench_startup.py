"""Where each second of a command's fixed cost goes: `--help`, `report`, a 1-iteration local run, a
1-iteration Ray run (a fresh local Ray, and a head already running), the README's main job
(`make run`: sine_quick) and a 2-member packed sweep, each a fresh process as a user runs it.

`--help` and `report` are timed whole, as a user runs them. Every other command runs under a thin
wrapper (this file, `--child`) that times the project's own functions from outside: import
(interpreter start to the command's `main`, with the trainer's modules), config, tracking store
(the MLflow hook's start: what the run waits for), Ray start (`ray.init`), workers ready (the Ray
backend up, less `ray.init`), first iteration, training (the rest of the loop), evaluation, plots,
model logging (the network and the adapt model, where the run waits for them), the rest of
tracking (metrics, artifacts, tags, and waiting for the tracking thread) and shutdown (after the
command returns to process exit). Phases are disjoint; "other" is the wall time no phase covers
(sampling set-up, checkpoints, printing); "background" is time spent on the tracking thread beside
them, not part of the wall time. Derived: "to first iteration" (process start to the first
step's bookkeeping) and "MLflow waited" (tracking store + model logging + tracking: what the run's
own thread spent on MLflow). Two code trees can be compared side by side on one
machine (`--before DIR`: a checkout of an older commit, run with this same environment).

    python benchmarks/bench_startup.py [--before /tmp/before] [--repeats 1] [--skip make_run] [--head]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TO_FIRST, MLFLOW = "to first iteration", "MLflow waited"  # derived: the goals' two measures
BACKGROUND = "background"  # seconds spent on other threads (MLflow's), beside the wall time
LIGHT = ("--help", "report")  # timed whole (wall only): no run, so no phases
PHASES = ("import", "config", "tracking store", "ray start", "workers ready", "first iteration", "training",
          "evaluation", "plots", "model logging", "tracking", "shutdown", "other")


# -- the child: run one command with its phases timed ------------------------------------------------
def child(out: str, start: float, argv: list[str]) -> int:
    record: dict[str, float] = {}
    t_main = time.time()

    def add(phase, dt):
        record[phase] = record.get(phase, 0.0) + dt

    def timed(owner, name, phase, first_only=False, exclusive_of=()):
        real = getattr(owner, name, None)
        if real is None:
            return
        state = {"calls": 0}

        def wrapper(*a, **k):
            state["calls"] += 1
            if first_only and state["calls"] > 1:
                return real(*a, **k)
            before = {p: record.get(p, 0.0) for p in exclusive_of}
            t0 = time.time()
            try:
                return real(*a, **k)
            finally:
                nested = sum(record.get(p, 0.0) - before[p] for p in exclusive_of)
                # on another thread (MLflow's): overlapped with the run, not a phase of its wall time
                main = threading.current_thread() is threading.main_thread()
                add(phase if main else BACKGROUND, time.time() - t0 - nested)

        setattr(owner, name, wrapper)

    # as `metatrain` does before Ray is imported (this wrapper imports it first): the auth mode
    try:
        from pipeline.distributed.backends import send_token_to
        from pipeline.distributed.head import default_address

        if "--local" not in argv and argv[0] in ("train", "sweep"):
            send_token_to(argv[argv.index("--address") + 1] if "--address" in argv else default_address())
    except ImportError:  # an older tree: Ray's own default
        pass
    import pipeline.cli as cli
    import pipeline.config as config

    record["import"] = time.time() - start  # the interpreter and the command line module
    t_import = time.time()
    timed(config, "load_config", "config", first_only=True)
    if hasattr(cli, "load_config"):  # a tree that imported it at the top of cli.py
        cli.load_config = config.load_config
    import pipeline.driver.trainer as trainer_mod
    try:  # a tree with run records: the plots and the evaluation are the record's
        import pipeline.driver.record as record_mod
    except ImportError:
        record_mod = None
    import pipeline.tracking as tracking

    record["import"] += time.time() - t_import  # the trainer's modules (torch): imported by every run
    timed(tracking.MlflowTracker, "on_start", "tracking store")
    timed(tracking.MlflowTracker, "on_log", "tracking")
    timed(tracking.MlflowTracker, "on_finish", "tracking", exclusive_of=("model logging",))
    timed(tracking, "log_model", "model logging")
    timed(tracking, "log_adapt_model", "model logging")
    timed(record_mod or trainer_mod, "write_run_plots", "plots")
    timed(record_mod.RunRecord if record_mod else trainer_mod.Trainer, "evaluate", "evaluation")
    try:
        import ray

        import pipeline.distributed.backends as backends
        timed(ray, "init", "ray start")
        timed(backends.RayBackend, "__init__", "workers ready", exclusive_of=("ray start",))
    except ImportError:
        pass
    # the first iteration: from the loop's start to the first step's bookkeeping
    owner = record_mod.RunRecord if record_mod else trainer_mod.Trainer  # who keeps the step's bookkeeping
    real_after, real_clock = owner.after_step, owner.start_clock
    clock = {}

    def start_clock(self, *a, **k):
        clock.setdefault("t0", time.time())
        return real_clock(self, *a, **k)

    def after_step(self, *a, **k):
        if "first" not in clock and "t0" in clock:
            clock["first"] = time.time()
            add("first iteration", clock["first"] - clock["t0"])
        clock["last"] = time.time()
        return real_after(self, *a, **k)

    owner.start_clock, owner.after_step = start_clock, after_step
    t_cmd = time.time()
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code or 0
    if "last" in clock:
        add("training", clock["last"] - clock["first"])
        record["to first iteration"] = clock["first"] - start  # from the process's start
    record["command"] = time.time() - t_cmd
    record["main_returned"] = time.time()
    record["main_started"] = t_main
    Path(out).write_text(json.dumps(record))
    sys.stdout.flush()
    if hasattr(cli, "exit_promptly"):  # as the `metatrain` command ends (pipeline.cli.run)
        cli.exit_promptly(int(code))
    return int(code)


# -- the parent: run each case in a fresh process, read its phases -----------------------------------
def run_case(tree: Path, argv: list[str], cwd: Path, env: dict) -> dict:
    env = {**env, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
    if argv[0] in LIGHT:  # as a user runs it: the wrapper's own imports would be most of it
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], cwd=cwd, env=env, capture_output=True,
                              text=True)
        wall = time.time() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{argv} failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return {**{p: 0.0 for p in PHASES}, BACKGROUND: 0.0, TO_FIRST: 0.0, MLFLOW: 0.0, "other": wall, "wall": wall}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", out, repr(t0), *argv],
                          cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    rec = json.loads(Path(out).read_text())
    os.unlink(out)
    phases = {p: rec.get(p, 0.0) for p in PHASES}
    phases[BACKGROUND] = rec.get(BACKGROUND, 0.0)
    phases["shutdown"] = t0 + wall - rec["main_returned"]
    phases["other"] = max(0.0, wall - sum(v for k, v in phases.items() if k not in ("other", BACKGROUND)))
    phases["wall"] = wall
    phases[TO_FIRST] = rec.get(TO_FIRST, 0.0)
    phases[MLFLOW] = sum(phases[p] for p in ("tracking store", "model logging", "tracking"))
    return phases


def table(rows: list[tuple[str, dict]]) -> str:
    used = [p for p in (*PHASES, BACKGROUND, TO_FIRST, MLFLOW) if any(r[p] >= 0.005 for _, r in rows)]
    head = "| case | wall | " + " | ".join(used) + " |"
    lines = [head, "|" + "---|" * (len(used) + 2)]
    for name, r in rows:
        lines.append(f"| {name} | {r['wall']:.2f} | " + " | ".join(f"{r[p]:.2f}" for p in used) + " |")
    return "\n".join(lines)


def cases(work: Path, skip: set[str]) -> list[tuple[str, list[str]]]:
    """(name, argv) of every case, writing into `work`; the report reads the sweep written before it."""
    common = ["--set", "iterations=1", "--set", "eval.tasks=10", "--set", f"output_dir={work / 'runs'}"]
    sweep = work / "two.yaml"
    sweep.write_text(f"base: sine_quick\nname: two\noutput_dir: {work / 'sweeps'}\nset: {{iterations: 50}}\n"
                     "space:\n  alpha: {grid: [0.01, 0.1]}\n")
    out = [("--help", ["--help"]),
           ("train 1 it, local, no tracking", ["train", "sine_quick", "--local", *common,
                                               "--set", "tracking.enabled=false"]),
           ("train 1 it, local, tracked", ["train", "sine_quick", "--local", *common]),
           ("train 1 it, Ray, tracked", ["train", "sine_quick", *common]),
           ("sweep, 2 members packed, 50 it", ["sweep", str(sweep)]),
           ("report (that sweep)", ["report", str(work / "sweeps" / "two")]),
           ("make_run (sine_quick, 1500 it)", ["train", "sine_quick", "--set", f"output_dir={work / 'runs'}"])]
    return [c for c in out if c[0].split(" ")[0].rstrip(",") not in skip]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2], float(sys.argv[3]), sys.argv[4:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="a checkout of an older commit to time side by side (same environment)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each case per tree (the minimum is shown)")
    ap.add_argument("--skip", default="", help="comma-separated case names (first word) to leave out: --help, "
                    "train, sweep, report, make_run")
    ap.add_argument("--head", action="store_true", help="also time the Ray run against a head already running "
                    "(`metatrain cluster start`; this tree only)")
    args = ap.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    trees = [("before", Path(args.before).resolve())] if args.before else []
    trees.append(("after", ROOT))
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}; "
          f"TORCHINDUCTOR_CACHE_DIR={os.environ.get('TORCHINDUCTOR_CACHE_DIR', '(default)')}", flush=True)
    results = {label: {} for label, _ in trees}
    for _ in range(args.repeats):  # the trees take turns: a machine whose speed drifts meets both alike
        for label, tree in trees:
            work = Path(tempfile.mkdtemp(prefix=f"startup-{label}-"))
            for name, argv in cases(work, skip):
                r = run_case(tree, argv, work, dict(os.environ))
                print(f"  {label} {name}: {r['wall']:.2f} s", flush=True)
                if name not in results[label] or r["wall"] < results[label][name]["wall"]:
                    results[label][name] = r
    if args.head:
        results["after"].update(head_rows(ROOT))
    for label, tree in trees:
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        print(f"\n{label}: {tree} at {commit}{' + uncommitted changes' if dirty else ''} (seconds; minimum of "
              f"{args.repeats})\n{table(list(results[label].items()))}", flush=True)
    if args.before:
        print("\nafter / before, wall: " + "; ".join(
            f"{n} {results['after'][n]['wall'] / b['wall']:.2f}x" for n, b in results["before"].items()
            if n in results["after"]), flush=True)
    print(f"\ndate: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)
    return 0


def head_rows(tree: Path) -> dict:
    """The 1-iteration Ray run against a head that `metatrain cluster start` started beforehand."""
    home = Path(tempfile.mkdtemp(prefix="startup-home-"))
    env = {**os.environ, "METATRAIN_HOME": str(home)}
    cli = [sys.executable, "-m", "pipeline.cli", "cluster"]
    port, dash = 6400 + os.getpid() % 500, 8300 + os.getpid() % 500
    t0 = time.time()
    subprocess.run([*cli, "start", "--port", str(port), "--dashboard-port", str(dash)], env=env, check=True,
                   capture_output=True, cwd=tree)
    print(f"  (cluster start: {time.time() - t0:.1f} s, once)", flush=True)
    try:
        work = Path(tempfile.mkdtemp(prefix="startup-head-"))
        argv = ["train", "sine_quick", "--set", "iterations=1", "--set", "eval.tasks=10", "--set",
                f"output_dir={work / 'runs'}", "--address", f"127.0.0.1:{port}"]
        r = run_case(tree, argv, work, env)
        print(f"  after train 1 it, Ray head running, tracked: {r['wall']:.2f} s", flush=True)
        return {"train 1 it, Ray head running, tracked": r}
    finally:
        subprocess.run([*cli, "stop"], env=env, capture_output=True, cwd=tree)


if __name__ == "__main__":
    sys.exit(main())
