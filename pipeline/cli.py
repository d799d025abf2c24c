"""`metatrain` command line: train, eval, adapt, export, serve, resume, sweep, report, data pack, submit, jobs, cluster.

Config errors are one line on stderr and exit code 2, raised before any directory is written. The
parser imports no torch, Ray or MLflow (`--help` and argument errors answer at once); each
command imports what it uses."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from pipeline import storage
from pipeline.storage import StorageError
from tasks import TASKS
from tasks.errors import ConfigError, did_you_mean


def _parse_shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--shots: expected comma-separated integers such as 5,10,20, got {text!r}") from None
    if not shots or any(k < 1 for k in shots):
        raise ConfigError(f"--shots: every K must be >= 1, got {text!r}")
    return shots


def _new_run_dir(cfg) -> Path:
    root = Path(cfg.output_dir)
    if cfg.run_name:
        run_dir = root / cfg.run_name
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(f"run_name: {run_dir} already holds a run; use `metatrain resume {run_dir}` "
                              "or choose another run_name")
        return run_dir
    stem = f"{cfg.method}-{cfg.task.name}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, n = root / stem, 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{stem}-{n}"
    return run_dir


def _load_run(run_dir: str, overrides: list[str] = ()):
    from pipeline.driver.run_dir import CONFIG, check_run_dir

    path = Path(run_dir)
    check_run_dir(path)
    from pipeline.config import load_config
    from pipeline.driver.checkpoint import with_hyperparams

    return path, with_hyperparams(load_config(path / CONFIG, overrides), path)


def _placement(args) -> list[str]:
    """--workers / --address / --local as config overrides (they are recorded in config.yaml)."""
    sets = []
    if getattr(args, "workers", None) is not None:
        sets.append(f"ray.workers={args.workers}")
    if getattr(args, "address", None):
        sets.append(f"ray.address={args.address}")
    if getattr(args, "local", False):
        sets.append("backend=local")
    return sets


def _tracking(cfg, run_dir: Path, force: bool = False) -> tuple:
    """The MLflow hook of a `train`/`resume` run (none when tracking.enabled is false)."""
    if not cfg.tracking.enabled:
        return ()
    from pipeline.tracking import MlflowTracker

    return (MlflowTracker(cfg, cfg.tracking.uri, run_name=run_dir.name, log=_log, force=force),)


def cmd_train(args) -> int:
    from pipeline.config import load_config

    cfg = load_config(args.config, [*args.set, *_placement(args)])
    if cfg.tracking.enabled:
        from pipeline.tracking import check_reachable, resolve_uri

        # recorded in config.yaml, so `resume` finds the same store from any working directory
        cfg.tracking.uri = resolve_uri(args.tracking_uri or cfg.tracking.uri, cfg.output_dir)
        check_reachable(cfg.tracking.uri)
    run_dir = _new_run_dir(cfg)
    if cfg.tracking.enabled:  # MLflow loads in its own process while this one imports torch
        from pipeline.tracking import prepare

        prepare(models=cfg.tracking.log_model)
    from pipeline.driver.trainer import Trainer

    print(f"run directory: {run_dir}", flush=True)
    with Trainer(cfg, run_dir, log=_log, hooks=_tracking(cfg, run_dir)) as trainer:
        results = trainer.train()
    return 0 if results["status"] == "completed" else 1


def cmd_resume(args) -> int:
    """Continue a run; a finished one only gets what a kill cut short (plots, MLflow records),
    and nothing at all when it has everything (--force evaluates it again, a new record)."""
    run_dir, cfg = _load_run(args.run_dir, _placement(args))
    from pipeline.driver.record import finished_results
    from pipeline.driver.trainer import Trainer

    done = None if args.force else finished_results(run_dir)
    if done is not None:
        from pipeline.driver import checkpoint

        # the results are those of the newest checkpoint; one damaged (the previous used) is resumed from
        if checkpoint.load(run_dir, _log, keys=checkpoint.PARAMS_KEYS)["iteration"] != done["iterations"]:
            done = None
    if done is not None:
        drawn = done.get("plots") or (run_dir / "plots").is_dir()
        missing = [] if not cfg.train.plots or drawn else ["plots"]
        if cfg.tracking.enabled:
            from pipeline.tracking import missing_records

            missing += missing_records(run_dir, cfg.tracking.uri, done, cfg.tracking.log_model)
        if not missing:
            print(f"{run_dir}: finished ({done['status']} at iteration {done['iterations']}/{cfg.iterations}) with "
                  f"every record written; nothing to do (--force evaluates it again)")
            return 0
        print(f"{run_dir}: finished ({done['status']} at iteration {done['iterations']}); writing what is missing: "
              f"{', '.join(missing)}", flush=True)
        cfg.backend = "local"  # nothing is computed on workers: no Ray
    with Trainer(cfg, run_dir, log=_log, hooks=_tracking(cfg, run_dir, force=args.force)) as trainer:
        results = trainer.complete(done) if done is not None else trainer.train(resume=True)
    return 0 if results["status"] == "completed" else 1


def cmd_sweep(args) -> int:
    from pipeline.distributed.backends import send_token_to
    from pipeline.distributed.head import default_address

    send_token_to(args.address or os.environ.get("RAY_ADDRESS") or default_address())  # before Ray is imported
    from pipeline.sweeps.driver import run_sweep

    return run_sweep(args.sweep, resume=args.resume, address=args.address, tracking_uri=args.tracking_uri, log=_log)


def cmd_pack(args) -> int:
    """Decode an image data set once into an Arrow file that every worker memory-maps."""
    from tasks.images import pack

    for src in args.src:
        if not Path(src).exists():
            raise ConfigError(f"--src: {src} does not exist")
    out = Path(args.out)
    if out.suffix != ".arrow":
        raise ConfigError(f"--out: the packed file must end in .arrow, got {out}")
    if out.exists() and not args.force:
        raise ConfigError(f"--out: {out} exists; pass --force to replace it")
    t0 = time.perf_counter()
    spec = TASKS[args.dataset]
    images = spec.read_folders(args.src, args.split_dir, args.image_size or spec.default_size)
    pack(images, out, args.dataset, log=_log)
    h, w, c = images.shape
    print(f"packed {len(images.images)} images ({h}x{w}x{c}) of {len(images.class_index())} classes into {out} "
          f"({out.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s; use it as task.data: [{out}]")
    return 0


def cmd_submit(args) -> int:
    from pipeline.jobs import submit

    return submit(args.kind, args.config, args.set, address=args.address, tracking_uri=args.tracking_uri,
                  follow=args.follow, wait=not args.no_wait, pip=not args.no_pip, log=_log)


def cmd_jobs(args) -> int:
    from pipeline.jobs import jobs_command

    if args.action != "list" and not args.job_id:
        raise ConfigError(f"jobs {args.action}: give the submission id (see `metatrain jobs list`)")
    return jobs_command(args.action, args.job_id, address=args.address, follow=args.follow, log=_log)


def cmd_report(args) -> int:
    from pipeline.sweeps.report import write_report

    report = write_report(Path(args.sweep_dir), _parse_shots(args.shots) if args.shots else None)
    print(report.text)
    print("written " + ", ".join(str(p) for p in report.files))
    return 0


def cmd_eval(args) -> int:
    run_dir, cfg = _load_run(args.run_dir, _placement(args))
    shots = _parse_shots(args.shots) if args.shots else None
    if args.tasks is not None and args.tasks < 1:
        raise ConfigError(f"--tasks: must be >= 1, got {args.tasks}")
    if args.seed is not None and args.seed < 0:
        raise ConfigError(f"--seed: must be >= 0, got {args.seed}")
    from pipeline.driver import checkpoint
    from pipeline.driver.evaluation import format_table
    from pipeline.driver.record import metric_name
    from pipeline.driver.trainer import Trainer
    from pipeline.serve.eval_elsewhere import retarget

    target = retarget(cfg, data=args.data, ways=args.ways, query=args.query, within_group=args.within_group)
    cfg = target.cfg
    if shots:
        cfg.eval.shots = shots  # checked against the data before any work
    seed = cfg.eval.seed if args.seed is None else args.seed
    with Trainer(cfg, run_dir, log=_log) as trainer:
        trainer.record.load_state_dict(checkpoint.load(run_dir, _log))
        table = trainer.evaluate(tasks=args.tasks, shots=shots, seed=seed)
    tasks = args.tasks or cfg.eval.tasks
    out = {"iteration": trainer.iteration, "metric": metric_name(trainer.experiment), "tasks": tasks,
           "seed": seed, "inner_steps": cfg.eval.inner_steps, "mask": cfg.eval.mask, "data": target.data,
           "protocol": target.protocol, "task": {k: getattr(cfg.task, k) for k in
                                                 ("name", "data", "split", "ways", "query", "within_group", "order")},
           "results": table}
    path = run_dir / f"eval-{target.tag + '-' if target.tag else ''}seed{seed}-tasks{tasks}.json"
    storage.write_text(path, json.dumps(out, indent=2))
    print(f"data: {target.data}\nprotocol: {target.protocol}; seed {seed}")
    print(format_table(table, out["metric"], header=f"{cfg.method} at iteration {trainer.iteration}: {tasks} test "
                       f"tasks (seed {seed}), {cfg.eval.inner_steps} inner step(s)"))
    print(f"written {path}")
    return 0


def cmd_adapt(args) -> int:
    """Adapt a finished run to the user's own few-shot task and predict its query examples."""
    import pandas as pd

    from pipeline.serve.adaptation import load_run
    from pipeline.serve.episode_files import ImageReader, read_csv_columns, read_query_images, read_support_folder

    run = load_run(args.run_dir)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:
        raise ConfigError(f"--out: {out} exists; pass --force to replace it")
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--out: no folder {out.parent}")
    if args.steps is not None and args.steps < 0:
        raise ConfigError(f"--steps: must be >= 0, got {args.steps}")
    if run.classification:
        reader = ImageReader(run.image_size, run.channels, run.invert)
        xs, ys = read_support_folder(args.support, reader, run.ways)
        xq, names = read_query_images(args.query, reader)
        for line in reader.note_lines():
            print(line, file=sys.stderr)
        table = run.adapt(xs, ys, args.steps).predict(xq)
        table.insert(0, "query", names)
        what = f"{len(ys)} support image(s) of {len(set(ys))} class(es)"
    else:
        if len(args.query) != 1:
            raise ConfigError(f"--query: a regression run takes one CSV with column x, got {len(args.query)} paths")
        support = read_csv_columns(args.support, ("x", "y"), "--support")
        query = read_csv_columns(args.query[0], ("x",), "--query")
        table = run.adapt(support["x"], support["y"], args.steps).predict(query["x"])
        table.insert(0, "x", query["x"].to_numpy())
        what = f"{len(support)} support point(s)"
    steps = run.cfg.eval.inner_steps if args.steps is None else args.steps
    print(f"{run.cfg.method} at iteration {run.iteration}, adapted to {what} with {steps} inner step(s) "
          f"(alpha {run.cfg.alpha:g}{', mask=' + run.cfg.eval.mask if run.learner.rule.masked else ''}):")
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(table.to_string(index=False))
    if out is not None:
        storage.write_file(out, lambda f: table.to_csv(f, index=False))
        print(f"written {out}")
    return 0


def cmd_export(args) -> int:
    """Write a finished run as an MLflow pyfunc model that adapts to the episode it is sent."""
    from pipeline.driver.run_dir import RESULTS
    from pipeline.serve.adaptation import load_run

    run = load_run(args.run_dir)
    if not (Path(args.run_dir) / RESULTS).is_file():
        raise ConfigError(f"RUN_DIR: {args.run_dir} has not finished (no {RESULTS}); `metatrain resume` it first")
    out = Path(args.out) if args.out else Path(args.run_dir) / "adapt_model"
    if out.exists():
        raise ConfigError(f"--out: {out} exists; choose another --out or remove it")
    if not out.parent.is_dir():
        raise ConfigError(f"--out: no folder {out.parent}")
    from pipeline.serve import serving

    serving.save(run, out)
    print(f"exported {run.kind} model ({run.cfg.method}, iteration {run.iteration}) to {out}\n"
          f"serve it: mlflow models serve -m {out} --env-manager local --host 127.0.0.1 --port 5001")
    return 0


def cmd_serve(args) -> int:
    """Serve a finished run's adaptation model with MLflow's scoring server (exported first if it
    is not yet), print the URL and a ready request; Ctrl+C stops it."""
    from pipeline.driver.run_dir import RESULTS, check_run_dir
    from pipeline.serve.model_server import ModelServer, port_in_use

    run_dir = Path(args.run_dir)
    check_run_dir(run_dir, need_checkpoint=True)
    if not (run_dir / RESULTS).is_file():
        raise ConfigError(f"RUN_DIR: {run_dir} has not finished (no {RESULTS}); `metatrain resume` it first")
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port: must be in [0, 65535] (0 = a free port), got {args.port}")
    if args.port and port_in_use(args.host, args.port):
        raise ConfigError(f"--port: {args.host}:{args.port} is in use; choose another (--port 0 picks a free one)")
    from pipeline.serve import serving
    from pipeline.serve.adaptation import load_run

    run = load_run(run_dir)
    model = run_dir / serving.MODEL_NAME
    if not (model / "MLmodel").is_file():
        serving.save(run, model)
        print(f"exported {run.kind} model ({run.cfg.method}, iteration {run.iteration}) to {model}", flush=True)
    request = run_dir / "serve_request.json"
    storage.write_text(request, json.dumps(serving.request_body(serving.test_episode(run))))

    def interrupt(signum, frame):  # a kill or a closed terminal stops the server as Ctrl+C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    try:
        with ModelServer(model, run_dir / "serve.log", host=args.host, port=args.port) as server:
            try:
                server.wait()
            except (RuntimeError, TimeoutError) as e:
                raise ConfigError(f"serve: the model server did not start ({str(e).splitlines()[0]}; see "
                                  f"{run_dir / 'serve.log'})") from None
            print(f"serving {run_dir} ({run.cfg.method}, {run.kind}, iteration {run.iteration}) at {server.url} "
                  f"(log: {run_dir / 'serve.log'}); Ctrl+C stops it\n"
                  f"try it with test task 0 of the run:\n"
                  f"curl -s {server.url}/invocations -H 'Content-Type: application/json' -d @{request}", flush=True)
            code = server.proc.wait()
    except KeyboardInterrupt:  # the server's process group is ended on leaving the with block
        print("stopping the model server", flush=True)
        return 0
    print(f"the model server exited with code {code}; see {run_dir / 'serve.log'}", file=sys.stderr)
    return 1


def cmd_cluster(args) -> int:
    from pipeline import local_cluster

    if args.action == "start":
        return local_cluster.start(args.cpus or os.cpu_count() or 1, args.port, args.dashboard_port, log=_log)
    return getattr(local_cluster, args.action)(log=_log)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _placement_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="Ray shard workers (default: ray.workers; 0 = sized to the cluster)")
    p.add_argument("--address", help="join an existing Ray cluster (default: ray.address, then RAY_ADDRESS, "
                   "else a local Ray started in process)")
    p.add_argument("--local", action="store_true", help="no Ray: run the shard function in this process")


class Parser(argparse.ArgumentParser):
    """argparse with a hint: an unknown command or choice names the closest one."""

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(repr, action.choices))
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r};{did_you_mean(value, action.choices)} choose from {choices}")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="metatrain", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    _run_commands(sub)
    _study_commands(sub)
    _cluster_commands(sub)
    return p


def _run_commands(sub) -> None:
    """One run: train, eval, adapt, export, serve, resume."""
    t = sub.add_parser("train", help="meta-train from a config (a path or a name in tune_configs/)")
    t.add_argument("config", help="an experiment config: a YAML path or a name in tune_configs/ (e.g. sine_quick)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted for nested keys, e.g. task.shots=5); repeatable")
    _placement_args(t)
    t.add_argument("--tracking-uri", help="MLflow tracking URI (default: tracking.uri, else "
                   "sqlite:///<output_dir>/mlflow.db)")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="evaluate a run's latest checkpoint on fresh test tasks")
    e.add_argument("run_dir", help="a run directory (config.yaml and checkpoints, as `metatrain train` writes it)")
    e.add_argument("--tasks", type=int, help="test tasks to evaluate on (default: the run's eval.tasks)")
    e.add_argument("--shots", help="comma-separated K values, e.g. 5,10,20")
    e.add_argument("--seed", type=int, help="test-task seed (default: the config's eval.seed)")
    e.add_argument("--data", nargs="+", help="evaluate on other data of the same kind: Omniglot folders/zips/.arrow, "
                   "a miniImageNet folder of class sub-folders; regression: a task, sinusoid or polynomial[:ORDER] "
                   "(default: the run's own test split)")
    e.add_argument("--ways", type=int, help="N-way test tasks, at most the run's ways (default: the run's)")
    e.add_argument("--query", type=int, help="query examples per class (regression: per task) (default: the run's)")
    e.add_argument("--within-group", action="store_true", help="every class of a task from one group (Omniglot "
                   "alphabet): Lake et al.'s within-alphabet protocol")
    _placement_args(e)
    e.set_defaults(fn=cmd_eval)
    a = sub.add_parser("adapt", help="adapt a finished run to your own few-shot task and predict its query examples")
    a.add_argument("run_dir", help="a run directory (config.yaml and checkpoints, as `metatrain train` writes it)")
    a.add_argument("--support", required=True, help="images: a folder of class sub-folders (one to a few images "
                   "each); regression: a CSV with columns x,y")
    a.add_argument("--query", required=True, nargs="+", help="images: image files and/or folders of them; "
                   "regression: a CSV with column x")
    a.add_argument("--steps", type=int, help="inner steps (default: the run's eval.inner_steps)")
    a.add_argument("--out", help="also write the predictions to this CSV file")
    a.add_argument("--force", action="store_true", help="replace an existing --out file")
    a.set_defaults(fn=cmd_adapt)
    x = sub.add_parser("export", help="write a finished run as an MLflow pyfunc model that adapts to a posted "
                       "few-shot episode (serve it with `mlflow models serve`)")
    x.add_argument("run_dir", help="a run directory (config.yaml and checkpoints, as `metatrain train` writes it)")
    x.add_argument("--out", help="the model folder to create (default: RUN_DIR/adapt_model)")
    x.set_defaults(fn=cmd_export)
    v = sub.add_parser("serve", help="serve a finished run's adaptation model over HTTP (MLflow's scoring server)")
    v.add_argument("run_dir", help="a finished run directory (as `metatrain train` writes it)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    v.add_argument("--port", type=int, default=5001, help="port (default: 5001; 0 = a free one)")
    v.set_defaults(fn=cmd_serve)
    r = sub.add_parser("resume", help="continue a run from its last checkpoint")
    r.add_argument("run_dir", help="a run directory (config.yaml and checkpoints, as `metatrain train` writes it)")
    r.add_argument("--force", action="store_true", help="a finished run: evaluate it again and log that evaluation "
                   "as a new record (without it, a finished run only gets what is missing)")
    _placement_args(r)
    r.set_defaults(fn=cmd_resume)


def _study_commands(sub) -> None:
    """Many runs and their data: sweep, report, data pack."""
    s = sub.add_parser("sweep", help="run a Ray Tune sweep of meta-training trials (a path or a name in tune_configs/)")
    s.add_argument("sweep", help="a sweep file: a YAML path or a name in tune_configs/ (e.g. sine_models)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials are kept")
    s.add_argument("--address", help="Ray cluster to run on (default: RAY_ADDRESS, else a local Ray)")
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default: the base config's tracking.uri, else "
                   "sqlite:///<sweep output_dir>/mlflow.db)")
    s.set_defaults(fn=cmd_sweep)
    rp = sub.add_parser("report", help="the study table (Markdown, Parquet) and figure of a sweep directory")
    rp.add_argument("sweep_dir", help="a sweep directory (output_dir/name of the sweep file)")
    rp.add_argument("--shots", help="comma-separated evaluation K to tabulate (default: all evaluated)")
    rp.set_defaults(fn=cmd_report)
    d = sub.add_parser("data", help="prepare image data sets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    pk = dsub.add_parser("pack", help="decode an image data set into an Arrow IPC file that workers memory-map")
    packable = {n: s for n, s in TASKS.items() if s.read_folders}
    pk.add_argument("dataset", choices=tuple(packable), help="which data set the folders hold")
    pk.add_argument("--src", nargs="+", required=True, help="; ".join(f"{n}: {s.data}" for n, s in packable.items()))
    pk.add_argument("--out", required=True, help="the .arrow file to write")
    sizes = ", ".join(f"{s.default_size} {n}" for n, s in packable.items())
    pk.add_argument("--image-size", type=int, default=0, help=f"side in pixels (default: {sizes})")
    pk.add_argument("--split-dir", default="", help="miniimagenet: folder of train/val/test.csv (default: --src)")
    pk.add_argument("--force", action="store_true", help="replace an existing --out file")
    pk.set_defaults(fn=cmd_pack)


def _cluster_commands(sub) -> None:
    """A Ray cluster: submit, jobs, cluster."""
    address_help = "the cluster's dashboard, e.g. http://127.0.0.1:8265 (default: RAY_API_SERVER_ADDRESS / RAY_ADDRESS)"
    sb = sub.add_parser("submit", help="send a train or sweep run to a Ray cluster as a job (Ray Jobs API)")
    sb.add_argument("kind", choices=("train", "sweep"), help="what the job runs: one run, or a sweep")
    sb.add_argument("config", help="a config / sweep file inside the project, or a name in tune_configs/")
    sb.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train: override a config key")
    sb.add_argument("--address", help=address_help)
    sb.add_argument("--tracking-uri", help="MLflow tracking URI the job logs to (default: the config's)")
    sb.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    sb.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    sb.add_argument("--no-pip", action="store_true", help="the cluster has the requirements installed already "
                    "(cluster.yaml installs them): skip the job's pip environment")
    sb.set_defaults(fn=cmd_submit)
    jb = sub.add_parser("jobs", help="list, watch, read and stop submitted jobs")
    jb.add_argument("action", choices=("list", "status", "logs", "stop"), help="what to do")
    jb.add_argument("job_id", nargs="?", help="the job (as `metatrain submit` printed it); not for list")
    jb.add_argument("--address", help=address_help)
    jb.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    jb.set_defaults(fn=cmd_jobs)
    cl = sub.add_parser("cluster", help="start, inspect or stop a Ray head on this machine (127.0.0.1, token "
                        "auth) for submit, jobs and --address")
    cl.add_argument("action", choices=("start", "status", "stop"), help="what to do")
    cl.add_argument("--cpus", type=int, help="start: CPUs the head offers (default: this machine's)")
    cl.add_argument("--port", type=int, default=6379, help="start: the head's address port (default: 6379)")
    cl.add_argument("--dashboard-port", type=int, default=8265, help="start: the dashboard / Jobs API port "
                    "(default: 8265)")
    cl.set_defaults(fn=cmd_cluster)


def main(argv: list[str] | None = None) -> int:
    # MLflow's INFO lines (creating its tables, validating a logged model's input example) would
    # interleave with the run's own; its warnings still show. Set before MLflow is imported (lazily,
    # by the commands that track), inherited by Ray workers and Tune trials; a user's value wins.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, StorageError) as e:
        print(f"metatrain: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        tracking = sys.modules.get("pipeline.tracking")  # imported by the commands that track
        if tracking is None or not isinstance(e, tracking.TrackingError):
            raise
        print(f"metatrain: error: {e}", file=sys.stderr)
        return 1


def run() -> None:
    """The `metatrain` console command: main(), then `exit_promptly`."""
    exit_promptly(main())


def exit_promptly(code: int) -> None:
    """Once the command's work is done and written (the tracking process drained, exit handlers run,
    output flushed), the interpreter's own teardown - freeing torch's, MLflow's and SQLAlchemy's
    modules one by one, about a second on 2 cores (benchmarks/bench_startup.py) - does nothing a
    user needs: the process ends here. A thread still running (another library's) gets the normal
    exit, which waits for it."""
    import atexit
    import threading

    if "pipeline.tracking" in sys.modules:
        sys.modules["pipeline.tracking"].drain()
    sys.stdout.flush()
    sys.stderr.flush()
    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()  # MLflow's, logging's, multiprocessing's: as at a normal exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
