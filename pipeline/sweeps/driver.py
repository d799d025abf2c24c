"""`metatrain sweep`: a Ray Tune sweep whose trials are meta-training runs.

Each trial is a normal run directory (`<sweep>/trials/<trial>/`, readable by `metatrain eval`)
trained by the same Trainer as `metatrain train`, with its own shard workers in the trial's
placement group, checkpointed through `tune.report(..., checkpoint=...)` and retried from that
checkpoint when it fails (`FailureConfig`). Every trial is a child MLflow run of the sweep's parent
run. An interrupted sweep continues with `--resume` (`Tuner.restore`); finished trials are not run
again. At the end the study report (tables, Parquet, figure) is written and logged. This module is
the driver side; what runs inside a trial's process is `pipeline/sweeps/trial.py`.

Sweep directory: sweep.yaml (the validated sweep, base config included), sweep.json (tracking URI,
parent run), trials.json (the driver's record of every trial), trials/, tune/ (Tune's state).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import yaml
from ray import tune

from pipeline import storage
from pipeline.config import Config, ConfigError
from pipeline.distributed.head import default_address
from pipeline.driver.schedulers import Pbt
from pipeline.storage import StorageError
from pipeline.sweeps import draws
from pipeline.sweeps.draws import population_sizes
from pipeline.sweeps.optuna_populations import PopulationSearch
from pipeline.sweeps.record import (  # noqa: F401
    FINISHED,
    MANIFEST,
    SPEC,
    STATE,
    TRIAL_STATUSES,
    TRIALS,
    TUNE_DIR,
    read_manifest,
    write_manifest,
)
from pipeline.sweeps.report import write_report
from pipeline.sweeps.spec import IN_POPULATIONS, Sweep, SweepConfig, load_sweep
from pipeline.sweeps.trial import TrialContext, member_id, member_values, run_trial, trial_run_name
from pipeline.tracking import (
    check_reachable,
    client_for,
    close_recorded_run,
    ensure_experiment,
    log_scalars,
    resolve_uri,
    start_run,
)
from pipeline.yaml_dataclasses import flatten, to_dict


# -- the driver's record of the trials ---------------------------------------------------------
def _close_trial_run(sweep_dir: Path, name: str, uri: str, status: str, run_status: str, error: str = "") -> None:
    """Bookkeeping only: a tracking hiccup here must not end the sweep (Tune callbacks that raise do)."""

    try:
        close_recorded_run(sweep_dir / TRIALS / name, uri, status, run_status, error)
    except Exception as e:  # noqa: BLE001
        print(f"[{name}] warning: could not mark its MLflow run {status}: {type(e).__name__}: {e}", flush=True)


def runs_of(trial_id: str, config: dict, swept) -> list[tuple[str, str, dict]]:
    """(manifest id, run name, swept values) of every run a Tune trial trains: itself, or each
    member of a packed population."""
    if "members" not in config:
        return [(trial_id, trial_run_name(trial_id, config, swept), {k: config[k] for k in swept})]
    out = []
    for i in range(len(config["members"])):
        values = member_values(config, i, swept)
        out.append((member_id(trial_id, i), trial_run_name(member_id(trial_id, i), values, swept), values))
    return out


def _shown(last: dict) -> str:
    evals = [k for k in last if k.startswith("eval_K") and k.endswith("_mean")]
    return " | ".join(f"K={k[6:-5]} {last[k]:.4f} +- {last[k[:-5] + '_ci95']:.4f}" for k in evals)


class SweepProgress(tune.Callback):
    """Driver-side progress lines and the trials.json record, one entry per run (a packed Tune
    trial's members each have their own); picklable: Tune stores it with the experiment and
    restores it on --resume."""

    def __init__(self, sweep_dir: str, swept: tuple[str, ...], iterations: int, total: int, uri: str):
        self.sweep_dir, self.swept, self.iterations, self.total = Path(sweep_dir), swept, iterations, total
        self.uri = uri

    def _runs(self, trial) -> list[tuple[str, str, dict]]:
        return runs_of(trial.trial_id, trial.config, self.swept)

    def _label(self, trial) -> str:
        runs = self._runs(trial)
        if "members" not in trial.config:
            return runs[0][1]
        fixed = ",".join(f"{k.rsplit('.', 1)[-1]}={trial.config[k]}" for k in self.swept if k in trial.config)
        return f"{trial.trial_id.rsplit('_', 1)[-1]}-{fixed + ',' if fixed else ''}population of {len(runs)}"

    def _done(self, pending: int = 0) -> str:
        """"done/total"; `pending` of the finished runs are still to be printed (a population's
        members: each line counts its own)."""
        done = sum(1 for t in read_manifest(self.sweep_dir).values() if t.get("status") not in (None, "running"))
        return f"{done - pending}/{self.total}"

    def _update_runs(self, trial, **fields) -> None:
        manifest = read_manifest(self.sweep_dir)
        for run_id, name, values in self._runs(trial):
            manifest.setdefault(run_id, {}).update({"name": name, "config": values, **fields})
        write_manifest(self.sweep_dir, manifest)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._update_runs(trial, status="running")
        print(f"[{self._label(trial)}] started", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("final") or result.get("logged_at") != result["iteration"]:
            return  # the final line comes from on_trial_complete; checkpoint-only reports repeat old numbers
        its = trial.config.get("iterations", self.iterations)
        what = "median meta-loss" if "members" in trial.config else "meta-loss"
        diverged = f" | diverged {result['diverged']}" if "members" in trial.config else ""
        if result.get("stopped"):
            diverged += f" | stopped {result['stopped']} of {len(trial.config['members'])}"
        if "pbt_exploits" in result:
            diverged += f" | pbt exploits {result['pbt_exploits']:.0f}"
        print(f"[{self._label(trial)}] it {result['iteration']}/{its} | {what} {result['meta_loss']:.4f} | "
              f"{result['tasks_per_s']:,.0f} tasks/s{diverged}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        runs = self._runs(trial)
        if last.get("final"):
            finals = json.loads(last["members_final"]) if "members_final" in last else [last]
        else:  # ended by the scheduler before its last iteration
            finals = [{"status": "stopped"}] * len(runs)
        # where it ran: with reuse_actors a process runs trial after trial (Tune fills in pid and hostname)
        process = {"host": last["hostname"], "pid": last["pid"]} if "pid" in last else None
        manifest = read_manifest(self.sweep_dir)
        for (run_id, _, _), final in zip(runs, finals):
            stopped = final["status"] == "stopped" and "iteration" in final
            stopped_at = {"stopped_at": final["iteration"]} if stopped else {}
            lineage = {"lineage": final["pbt"]["lineage"], "final_values": final["pbt"]["final"]} if "pbt" in final \
                else {}
            manifest.setdefault(run_id, {}).update({"status": final["status"], "process": process, **stopped_at,
                                                    **lineage})
        write_manifest(self.sweep_dir, manifest)
        for i, ((_, name, _), final) in enumerate(zip(runs, finals)):
            if final["status"] == "stopped":
                _close_trial_run(self.sweep_dir, name, self.uri, "stopped", "KILLED")
                shown = f"stopped by the scheduler at iteration {final.get('iteration', last.get('iteration', 0))}"
            else:
                shown = _shown(final)
            print(f"[{name}] {final['status']}: {shown} ({self._done(len(runs) - 1 - i)} trials done)", flush=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        manifest = read_manifest(self.sweep_dir)
        for run_id, _, _ in self._runs(trial):
            entry = manifest.setdefault(run_id, {})
            entry["retries"] = entry.get("retries", 0) + 1
        write_manifest(self.sweep_dir, manifest)
        print(f"[{self._label(trial)}] failed; retrying from its last checkpoint", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = _error_line(trial)
        for _, name, _ in self._runs(trial):
            _close_trial_run(self.sweep_dir, name, self.uri, "error", "FAILED", error)
        self._update_runs(trial, status="error", error=error)
        print(f"[{self._label(trial)}] error after {trial.num_failures} attempt(s): {error} "
              f"({self._done()} trials done)", flush=True)


def _error_line(trial) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        lines = [l for l in Path(path).read_text().splitlines() if l.strip()]
        return lines[-1][:500] if lines else "unknown error"
    except OSError:
        return f"see {path}" if path else "unknown error"


# -- the sweep ---------------------------------------------------------------------------------
def _drawn(sweep: Sweep) -> bool:
    """A random search draws its runs before Tune starts (draws.py); Optuna and ASHA sample and
    stop trials as they go, in Tune."""
    return sweep.spec.search.name == "random" and sweep.spec.scheduler.name in ("none", *IN_POPULATIONS)


def _param_space(sweep: Sweep) -> dict:
    if _drawn(sweep):
        return draws.param_space(draws.trials(sweep))
    return {} if sweep.packed else draws.tune_space(sweep.space)  # packed Optuna: its searcher proposes


def _tune_config(sweep: Sweep, sweep_dir: str):
    spec = sweep.spec
    swept_iterations = next(iter(sweep.space.get("iterations", {"grid": [0]}).values()))
    iterations = max(sweep.base["iterations"], *swept_iterations)  # ASHA's horizon: the longest trial
    # reuse_actors: a finished trial's process runs the next trial (of the same resources), instead
    # of a new process importing Python, torch and MLflow again: ~10 s per trial change before,
    # a large share of a sweep of short trials such as populations (benchmarks/RESULTS.md, "End to end").
    kw = {"num_samples": 1 if _drawn(sweep) else spec.num_samples, "trial_dirname_creator": _trial_dirname,
          "reuse_actors": True}
    if spec.scheduler.name == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # max_t one past the end: ASHA stops a trial that reaches max_t.
        kw["scheduler"] = ASHAScheduler(time_attr="iteration", max_t=iterations + 1,
                                        grace_period=spec.scheduler.grace_period or max(1, iterations // 10),
                                        reduction_factor=spec.scheduler.reduction_factor)
    if spec.search.name == "optuna" and sweep.packed:  # a population per Tune trial, its members Optuna's
        sizes = population_sizes(sweep.trial_count(), spec.pack.max_members)
        kw["search_alg"] = PopulationSearch(sweep.space, sizes, spec.metric, spec.mode, spec.seed,
                                            spec.max_concurrent_trials, sweep_dir)
        kw["num_samples"] = len(sizes)
        kw["max_concurrent_trials"] = spec.max_concurrent_trials or None
    elif spec.search.name == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        kw["search_alg"] = OptunaSearch(seed=spec.seed)
        kw["max_concurrent_trials"] = spec.max_concurrent_trials or None
    else:  # Tune's default generator, seeded; it applies the concurrency limit itself
        from ray.tune.search import BasicVariantGenerator

        kw["search_alg"] = BasicVariantGenerator(random_state=spec.seed, max_concurrent=spec.max_concurrent_trials)
    if spec.scheduler.name != "none" or spec.search.name != "random":
        kw.update(metric=spec.metric, mode=spec.mode)
    return tune.TuneConfig(**kw)


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _check_resources(sweep: Sweep, started_ray: bool, log) -> None:
    import ray

    need = {}
    for bundle in sweep.spec.resources.bundles():
        for k, v in bundle.items():
            need[k] = need.get(k, 0) + v
    have = ray.cluster_resources()
    short = [f"{v:g} {k} (the cluster has {have.get(k, 0):g})" for k, v in need.items() if v > have.get(k, 0) + 1e-9]
    if short:
        msg = (f"resources: one trial needs {', '.join(short)}; lower resources.workers / cpus / cpus_per_worker / "
               "gpus_per_worker")
        if started_ray:
            raise ConfigError(msg)
        log(f"warning: {msg} (waiting for the cluster to scale up)")


def run_sweep(path: str, *, resume: bool = False, address: str | None = None, tracking_uri: str | None = None,
              log=print) -> int:
    """Run (or continue) a sweep; returns the exit code (0 done, 1 some trials failed, 130 interrupted)."""

    sweep = load_sweep(path)
    spec = sweep.spec
    sweep_dir = (Path(spec.output_dir) / spec.name).resolve()
    state, uri = _open_record(sweep, sweep_dir, resume, tracking_uri)
    check_reachable(uri)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress lines instead of Tune's tables
    # Every trial checkpoint forces a snapshot of Tune's state (num_to_keep is set); with short
    # trials Tune warns about that at each one. The cost is small next to a meta-iteration.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

    address = address or os.environ.get("RAY_ADDRESS") or default_address()  # with its token: cli.cmd_sweep
    import ray

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        _check_resources(sweep, started_ray, log)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            storage.write_text(sweep_dir / SPEC, yaml.safe_dump(sweep.to_dict(), sort_keys=False))
        state = _start_parent_run(sweep, sweep_dir, uri, state)
        storage.write_text(sweep_dir / STATE, json.dumps(state, indent=2))
        ctx = _trial_context(sweep, sweep_dir, uri, state)
        _say_plan(sweep, sweep_dir, uri, state["parent_run_id"], log)
        grid = _tuner(sweep, sweep_dir, ctx, resume, uri, log).fit()
        return _finish(sweep, sweep_dir, grid, uri, state["parent_run_id"], path, log)
    except StorageError as e:
        if e.finished:  # the report's own line
            raise
        raise e.finished_by(f"the trials' run directories and Tune's state in {sweep_dir} are kept",
                            f"metatrain sweep {path} --resume") from None
    finally:
        if started_ray:
            ray.shutdown()


def _open_record(sweep, sweep_dir: Path, resume: bool, tracking_uri: str | None) -> tuple[dict, str]:
    """(the sweep's state, its tracking URI): a resumed sweep's as recorded (its file unchanged),
    a new sweep's from nothing (its directory empty)."""
    spec = sweep.spec
    if not resume:
        if sweep_dir.exists() and any(sweep_dir.iterdir()):
            raise ConfigError(f"name: {sweep_dir} already holds a sweep; continue it with --resume, or give the sweep "
                              "another name")
        return {}, resolve_uri(tracking_uri or sweep.base["tracking"]["uri"], spec.output_dir)
    if not (sweep_dir / STATE).is_file():
        raise ConfigError(f"--resume: {sweep_dir} holds no sweep to resume (no {STATE}); start it without --resume")
    state = json.loads((sweep_dir / STATE).read_text())
    _check_unchanged(yaml.safe_load((sweep_dir / SPEC).read_text()), sweep.to_dict())
    uri = state["tracking_uri"]
    if tracking_uri and resolve_uri(tracking_uri, spec.output_dir) != uri:
        raise ConfigError(f"--tracking-uri: this sweep is tracked at {uri}; resume it there (omit --tracking-uri)")
    return state, uri


def _trial_context(sweep, sweep_dir: Path, uri: str, state: dict) -> TrialContext:
    """What every trial process needs: the base config, the swept keys, where to record, the scheduler
    acting inside populations (halving's rungs, PBT's settings)."""
    spec, s = sweep.spec, sweep.spec.scheduler
    halving = s.rungs_from(sweep.base["iterations"]) if s.name == "halving" else None
    pbt = Pbt(s.interval_from(sweep.base["iterations"]), s.quantile_fraction, s.resample_probability,
              tuple(s.perturbation_factors), s.hyperparam_mutations, (spec.seed,)) if s.name == "pbt" else None
    return TrialContext(sweep.base, tuple(sweep.swept_keys), str(sweep_dir), uri, state["experiment_id"],
                        state["parent_run_id"], asdict(spec.resources), spec.metric, halving, pbt)


def _say_plan(sweep, sweep_dir: Path, uri: str, parent_run_id: str, log) -> None:
    """The start lines: what trains, on what, over which keys, where it is recorded, and how it packs."""
    spec, total = sweep.spec, sweep.trial_count()
    methods = [m for e in sweep.space["method"].values() for m in e] if "method" in sweep.space \
        else [sweep.base["method"]]  # a swept method: every one it takes
    log(f"sweep {spec.name}: {total} trial(s) of {', '.join(methods)} on {sweep.base['task']['name']} "
        f"over {', '.join(sweep.swept_keys)} | {sweep_dir} | MLflow {uri} (parent run {parent_run_id})")
    if sweep.packed:
        sizes = ([len(p["members"]) for p in draws.trials(sweep)] if _drawn(sweep)
                 else population_sizes(total, spec.pack.max_members))
        by = "" if _drawn(sweep) else "; members proposed by optuna"
        log(f"packed: trials that differ only in {', '.join(sweep.packed)} train as populations of "
            f"{'/'.join(map(str, sorted(set(sizes))))} run(s), {len(sizes)} Tune trial(s) "
            f"(pack.max_members: {spec.pack.max_members}{by})")
    elif sweep.unpacked_because:
        log(f"not packed: {sweep.unpacked_because}; one Tune trial per run")


def _tuner(sweep, sweep_dir: Path, ctx: TrialContext, resume: bool, uri: str, log) -> tune.Tuner:
    """Tune's Tuner: restored from the sweep's Tune state when resuming, else new."""
    spec = sweep.spec
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                                    tune.PlacementGroupFactory(spec.resources.bundles()))
    tune_path = sweep_dir / TUNE_DIR
    if resume and tune.Tuner.can_restore(str(tune_path)):
        log(f"resuming from {tune_path}")
        # param_space again: Tune stores its functions (draws.param_space's lookups) as placeholders
        return tune.Tuner.restore(str(tune_path), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True, param_space=_param_space(sweep))
    progress = SweepProgress(str(sweep_dir), ctx.swept, sweep.base["iterations"], sweep.trial_count(), uri)
    return tune.Tuner(trainable, param_space=_param_space(sweep), tune_config=_tune_config(sweep, str(sweep_dir)),
                      run_config=tune.RunConfig(
                          name=TUNE_DIR, storage_path=str(sweep_dir), callbacks=[progress], verbose=0,
                          failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


def _check_unchanged(stored: dict, now: dict) -> None:
    """Refuse to resume a sweep whose definition changed. Keys this version added to the schema
    since the sweep started are fine while they hold their defaults (the trials ran with those)."""
    a, b = flatten(stored), flatten(now)
    defaults = {**flatten(to_dict(SweepConfig())), **flatten({"base_config": to_dict(Config())})}
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)
                     and not (k not in a and k in defaults and b.get(k) == defaults[k]))
    if changed:
        raise ConfigError(f"--resume: the sweep changed since it started ({', '.join(changed[:3])}); restore the "
                          "sweep file, or start a new sweep under another name")


def _start_parent_run(sweep: Sweep, sweep_dir: Path, uri: str, state: dict) -> dict:
    """The sweep's parent run: created with a new sweep, reopened by --resume (sweep.json)."""

    client = client_for(uri)
    if state.get("parent_run_id"):
        client.update_run(state["parent_run_id"], status="RUNNING")
        client.set_tag(state["parent_run_id"], "status", "running")
        return state
    experiment_id = ensure_experiment(uri, sweep.spec.name)
    params = {k: v for k, v in flatten(sweep.to_dict()).items() if not k.startswith(("base_config.", "space."))}
    params.update({f"space.{k}": json.dumps(v) for k, v in sweep.space.items()})
    run_id = start_run(client, experiment_id, run_name=sweep.spec.name, params=params,
                       tags={"type": "sweep", "sweep_dir": str(sweep_dir), "status": "running",
                             "method": str(sweep.base["method"]), "task": sweep.base["task"]["name"]})
    return {"tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": run_id}


def _finish(sweep: Sweep, sweep_dir: Path, grid, uri: str, parent_run_id: str, path, log) -> int:
    """Settle every trial's status from Tune's results, then report (or say how to resume)."""

    manifest = read_manifest(sweep_dir)
    for result in grid:
        if not result.config:  # never started
            continue
        trial_id = Path(result.path).name
        metrics = result.metrics or {}
        runs = runs_of(trial_id, result.config, sweep.swept_keys)
        finals = json.loads(metrics["members_final"]) if "members_final" in metrics else [metrics] * len(runs)
        for (run_id, name, values), final in zip(runs, finals):
            entry = manifest.setdefault(run_id, {"name": name, "config": values})
            if metrics.get("final"):
                entry["status"] = final["status"]
            elif result.error is not None:
                entry["status"], entry["error"] = "error", entry.get("error") or str(result.error).splitlines()[0][:500]
            elif entry.get("status") != "stopped":
                entry["status"] = "unfinished"
    write_manifest(sweep_dir, manifest)
    counts = {k: sum(t["status"] == k for t in manifest.values()) for k in TRIAL_STATUSES}
    # Tune creates trials lazily: an interrupted sweep may not even have created the last ones.
    counts["unfinished"] = sweep.trial_count() - sum(v for k, v in counts.items() if k != "unfinished")
    client = client_for(uri)
    log_scalars(client, parent_run_id, {f"trials_{k}": v for k, v in counts.items()}, 0)
    if counts["unfinished"]:
        client.set_tag(parent_run_id, "status", "interrupted")
        client.set_terminated(parent_run_id, "KILLED")
        log(f"sweep interrupted: {counts['unfinished']} trial(s) unfinished; continue it with: "
            f"metatrain sweep {path} --resume")
        return 130
    try:
        report = write_report(sweep_dir)
    except StorageError as e:
        raise e.finished_by(f"every trial's run directory and {MANIFEST} in {sweep_dir} are kept",
                            f"metatrain report {sweep_dir}") from None
    log(report.text)
    for p in report.files:
        client.log_artifact(parent_run_id, str(p), "report")
    client.log_artifact(parent_run_id, str(sweep_dir / SPEC))
    client.log_artifact(parent_run_id, str(sweep_dir / MANIFEST))
    client.set_tag(parent_run_id, "status", "completed")
    client.set_terminated(parent_run_id, "FINISHED")
    log(f"trials: {', '.join(f'{v} {k}' for k, v in counts.items() if v)} | report: "
        f"{', '.join(str(p) for p in report.files)}")
    return 1 if counts["error"] else 0
