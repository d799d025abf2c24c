"""One run's record: its directory (config.yaml, metrics.jsonl, checkpoints, results.json, plots),
its counters and status, validation history, the schedulers' records of it (halving's rungs, PBT's
lineage, its current values) and its hooks (MLflow, Tune). A `Trainer` drives one record; a
`Population` drives one per member over one stacked state. The record computes nothing: its driver
hands it each step's outcome (`after_step`) and the facts only a driver knows (`RunDriver`)."""
from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from pathlib import Path
from typing import Protocol

import torch

from pipeline import storage
from pipeline.config import MUTABLE, Config, ConfigError, save_config
from pipeline.driver import checkpoint
from pipeline.driver.evaluation import finite_or_none, format_table
from pipeline.driver.families import family_of
from pipeline.driver.hooks import RunHook, iteration_scalars
from pipeline.driver.run_dir import CHECKPOINT, CONFIG, METRICS, PLOTS, RESULTS, read_metrics
from pipeline.shards.chunking import describe_chunk_times, pick_chunk_size
from pipeline.storage import StorageError
from pipeline.yaml_dataclasses import load_yaml


def metric_name(experiment) -> str:
    return experiment.metric_name


def write_run_plots(run: RunRecord, results: dict | None = None) -> list[Path]:
    """Every figure of the run's family that applies to a finished run, into RUN_DIR/plots/."""
    return run.family.figures(run, read_metrics(run.run_dir), run.run_dir / PLOTS, results)


def finished_results(run_dir: Path) -> dict | None:
    """results.json of a run that trained to its end and was evaluated (completed or diverged), else
    None (never started, interrupted, or stopped by a scheduler: those continue)."""
    path = Path(run_dir) / RESULTS
    results = json.loads(path.read_text()) if path.is_file() else None
    return results if results and results.get("status") in ("completed", "diverged") else None


def check_trainable(cfg: Config) -> None:
    if cfg.task.split == "all":
        raise ConfigError("task.split: 'all' makes every class a test class: it is for `metatrain eval --data`, "
                          "not for training")


@contextlib.contextmanager
def reported_aborts(records, storage_fault):
    """Every record's hooks hear of an exception that ends training (on_abort); a full or failing
    disk is raised again as `storage_fault(e)`: one line saying what is kept and how to finish."""
    try:
        yield
    except BaseException as e:
        fault = storage_fault(e) if isinstance(e, StorageError) else None
        for record in records:
            record.emit("on_abort", fault or e)
        if fault is not None:
            raise fault from None
        raise


class RunDriver(Protocol):
    """What a record asks of the driver that trains it."""

    backend: object  # where the meta-gradients are computed (its workers, name, placement, changes)

    def updated_fraction(self, params: dict) -> dict | None: ...
    def validate(self, params: dict) -> float: ...  # train.validate_every's score
    def eval_backend(self, run: RunRecord): ...  # where the run's evaluation runs


class RunRecord:
    """One run's record (see the module's docstring), driven by a Trainer or a Population.

    Arguments:
        cfg: the run's config; a scheduler's new values are written into it (`set_values`): it is
            the run's record of its current values (checkpoint, evaluation).
        run_dir: the run's folder.
        driver: what trains it (RunDriver).
        log: where the run's lines go.
        hooks: its RunHooks (MLflow's tracker).
        experiment: its shard source, if its driver built one (else built when first asked:
            a population's member evaluates on its own).

    Example:
        >>> record = RunRecord(cfg, "runs/a", trainer, hooks=(tracker,))   # doctest: +SKIP
        >>> record.bind(adam, row=0)   # its parameters and Adam moments: row 0 of adam's stacked state
    """

    def __init__(self, cfg: Config, run_dir: Path, driver: RunDriver, log=print, hooks: tuple[RunHook, ...] = (),
                 experiment=None):
        self.cfg, self.run_dir, self.driver, self.log, self.hooks = cfg, Path(run_dir), driver, log, tuple(hooks)
        self.family = family_of(cfg.method)
        if experiment is not None:
            self.experiment = experiment
        self.adam, self.row, self.params = None, 0, {}
        self.iteration, self.skipped, self.bad_streak, self.status = 0, 0, 0, "running"
        self.carry = None  # per-task state an iteration hands to the next (learned optimizers' optimizees)
        # train.validate_every: [[iteration, validation loss], ...] and the best-scoring parameters
        # ({iteration, loss, params}), which the run is evaluated with
        self.validations, self.selected, self._validation = [], None, None
        self.last_scalars: dict[str, float] = {}  # the last logged window's iteration_scalars
        self.rungs: list[dict] = []  # a halving scheduler's decisions on this run: iteration, val_loss, kept
        self.lineage: list[dict] = []  # PBT's exploits of this run: iteration, donor, old -> new values
        self.saved_at: int | None = None  # the iteration of the newest checkpoint this process wrote or loaded

    @functools.cached_property
    def experiment(self):
        """The run's own shard source (its config's): a population's member builds it to evaluate."""
        return self.family.source(self.cfg)

    def bind(self, adam, row: int, params: dict | None = None) -> None:
        """Where this run's parameters and Adam moments live: row `row` of `adam`'s stacked state
        (None: a run without meta-parameters); `params`: a copy of them to evaluate with instead."""
        self.adam, self.row = adam, row
        self.params = params if params is not None else (
            {k: v[row] for k, v in adam.params.items()} if adam is not None else {})

    def emit(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    def announce_start(self, resumed: bool) -> None:
        """The hooks hear the run start; a resumed run's hooks also get what it logged before its
        checkpoint (each keeps what it lacks)."""
        self.emit("on_start", resumed)
        if resumed:
            self.emit("on_replay", read_metrics(self.run_dir))

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"iteration": self.iteration, "params": {k: v.detach().clone() for k, v in self.params.items()},
                 "optimizer": self.adam.row_state(self.row, self.cfg.beta) if self.adam else {},
                 "torch_rng": torch.get_rng_state(),
                 "skipped": self.skipped, "bad_streak": self.bad_streak, "status": self.status}
        if self.carry is not None:
            state["carry"] = {k: v.detach().clone() for k, v in self.carry.items()}
        if self.validations:
            state["validations"] = [list(v) for v in self.validations]
        if self.selected is not None:
            state["selected"] = {**self.selected, "params": {k: v.clone() for k, v in self.selected["params"].items()}}
        if self.rungs:
            state["rungs"] = [dict(r) for r in self.rungs]
        if self.lineage:  # the values differ from config.yaml's from the first exploit on
            state["lineage"] = [dict(e) for e in self.lineage]
            state[checkpoint.HYPERPARAMS] = self.hyperparams()
        return state

    def hyperparams(self) -> dict:
        """The values PBT may change (pipeline/driver/schedulers/pbt.py)."""
        return {k: getattr(self.cfg, k) for k in MUTABLE}

    def set_values(self, values: dict) -> None:
        """A scheduler's new values of MUTABLE keys."""
        for key in MUTABLE:
            setattr(self.cfg, key, values[key])

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(state["params"][k])
        if self.adam:
            self.adam.load_row_state(self.row, state["optimizer"])
        self.carry = state.get("carry")
        self.validations, self.selected = [list(v) for v in state.get("validations", [])], state.get("selected")
        self.rungs = [dict(r) for r in state.get("rungs", [])]
        self.lineage = [dict(e) for e in state.get("lineage", [])]
        checkpoint.apply_hyperparams(self.cfg, state)
        torch.set_rng_state(state["torch_rng"])
        self.iteration, self.skipped = state["iteration"], state["skipped"]
        self.saved_at = state["iteration"]
        self.bad_streak, self.status = state["bad_streak"], state["status"]

    def save(self) -> None:
        checkpoint.save(self.run_dir, self.state_dict())
        self.saved_at = self.iteration

    def storage_fault(self, e: StorageError) -> StorageError:
        """A full or failing disk, said in one line with what is kept and how to finish the run."""
        kept = (f"the checkpoint of iteration {self.saved_at} in {self.run_dir} is intact" if self.saved_at is not None
                else f"nothing of {self.run_dir} was saved yet")
        return e.finished_by(kept, f"metatrain resume {self.run_dir}" if self.saved_at is not None
                             else "run the command again")

    # -- the run directory -------------------------------------------------------------------
    def begin(self, state: dict | None = None) -> None:
        """The run directory: fresh (its config and first checkpoint), or continued from `state`
        (a checkpoint's), the metric lines written after it dropped."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if state is not None:
            self.load_state_dict(state)
            self._truncate_metrics()
            self.log(f"resuming {self.run_dir} at iteration {self.iteration}/{self.cfg.iterations}")
        else:
            save_config(self.cfg, self.run_dir / CONFIG)
            (self.run_dir / METRICS).unlink(missing_ok=True)  # a retried trial starts its log afresh
            self.save()

    def choose_chunk_size(self, resumed: bool, time_choices, net, log=None) -> int:
        """train.tasks_per_vmap: auto resolved: as this run directory's config.yaml recorded it when
        resumed; the whole shard for a dense network (`net`: the run's); else timed
        (`time_choices()`: {choice: seconds}), the choice logged in one line. The driver uses it from
        then on and writes it into config.yaml: chunking changes float rounding, so a resumed run
        keeps the choice of its first start."""
        path = self.run_dir / CONFIG
        recorded = load_yaml(path).get("train", {}).get("tasks_per_vmap") if resumed and path.is_file() else None
        if isinstance(recorded, int) and not isinstance(recorded, bool):
            return recorded
        if self.cfg.train.block_tasks:  # a timed choice would make the bits depend on the machine's load
            (log or self.log)("train.tasks_per_vmap: auto -> whole block (train.block_tasks: blocks are the "
                              "vectorised unit)")
            return 0
        if not any(cell.kind == "conv" for cell in net.cells):
            # Dense shards (sine MLPs) are dispatch-bound: one vmap is the fastest (benchmarks/RESULTS.md),
            # and a timed choice would make the run's float rounding, hence its numbers after
            # thousands of iterations, depend on the machine's load at start.
            (log or self.log)("train.tasks_per_vmap: auto -> whole shard (dense network, not timed)")
            return 0
        times = time_choices()
        chosen = pick_chunk_size(times)
        (log or self.log)(describe_chunk_times(times, chosen))
        return chosen

    def _truncate_metrics(self) -> None:
        """Drop metric lines written after the checkpoint we resume from (they will be redone)."""
        path = self.run_dir / METRICS
        if path.is_file():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["iteration"] <= self.iteration:
                        keep.append(line)
                except (ValueError, KeyError):  # a line cut short by the crash
                    pass
            storage.write_text(path, "".join(l + "\n" for l in keep))

    # -- training bookkeeping ----------------------------------------------------------------
    def start_clock(self) -> None:
        self._window, self._t_window = [], time.perf_counter()
        self._t_start, self._it_start = self._t_window, self.iteration

    def after_step(self, finite: bool, loss: float, curve: list, metric: float) -> bool:
        """The bookkeeping of one outer step whose update (if finite) is applied: the non-finite
        guard, progress lines and metrics, periodic checkpoints. False when the run stops here."""
        cfg = self.cfg
        if finite:
            self.bad_streak = 0
            self._window.append((loss, curve, metric))
        else:  # never let a non-finite loss or gradient reach the parameters
            self.skipped += 1
            self.bad_streak += 1
        self.iteration += 1
        if self.bad_streak >= cfg.train.max_bad_steps:
            self.status = "diverged"
            now = time.perf_counter()  # the metrics of the diverging stretch are part of the result
            self._log_window(self._window, now - self._t_window, now - self._t_start, self.iteration - self._it_start)
            self.log(f"diverged: {self.bad_streak} consecutive non-finite meta-losses/gradients "
                     f"at iteration {self.iteration}; parameters kept from the last finite step")
            return False
        every = cfg.train.validate_every
        if every and (self.iteration % every == 0 or self.iteration == cfg.iterations):
            self.validate()
        if self.iteration % cfg.train.log_every == 0 or self.iteration == cfg.iterations:
            now = time.perf_counter()
            self._log_window(self._window, now - self._t_window, now - self._t_start, self.iteration - self._it_start)
            self._window, self._t_window = [], now
        # The last iteration is saved once, by end_loop, with its final status: the previous
        # checkpoint then stays the last periodic one (the fallback if the newest is damaged).
        if self.iteration % cfg.train.checkpoint_every == 0 and self.iteration < cfg.iterations:
            self.save()
            self.emit("on_checkpoint")
        return True

    def validate(self) -> None:
        """train.validate_every: score the current parameters on the validation optimizees and keep
        them if they are the best so far (ties: the earlier)."""
        loss = self.driver.validate(self.params)
        self.validations.append([self.iteration, loss])
        self._validation = loss
        if math.isfinite(loss) and (self.selected is None or loss < self.selected["loss"]):
            self.selected = {"iteration": self.iteration, "loss": loss,
                             "params": {k: v.detach().clone() for k, v in self.params.items()}}
        best = (f"best {self.selected['loss']:.4f} at it {self.selected['iteration']}" if self.selected
                else "no finite validation loss yet")
        measure = self.experiment.metric_name + (" on held-out data" if self.cfg.train.meta_loss == "heldout" else "")
        self.log(f"[{self.cfg.method}] validation at it {self.iteration}: {measure} {loss:.4f} "
                 f"on {self.cfg.train.validate_tasks} optimizees | {best}")

    def end_loop(self) -> None:
        if self.status == "running":
            self.status = "completed"
        self.save()

    def stop(self) -> None:
        """A scheduler stopped the run here: it keeps its state and checkpoint."""
        self.status = "stopped"
        self.save()

    def record(self, entry: dict) -> None:
        """A scheduler's entry (val_loss and, for PBT, the values at a decision) in metrics.jsonl and
        to the hooks (MLflow's metric series)."""
        storage.append_line(self.run_dir / METRICS, json.dumps(entry))
        self.emit("on_log", entry)

    def _log_window(self, window, dt, elapsed, done) -> None:
        cfg = self.cfg
        tasks_per_s = len(window) * cfg.meta_batch_size / dt if dt > 0 else float("nan")
        eta = (cfg.iterations - self.iteration) * elapsed / max(done, 1)
        entry = {"iteration": self.iteration, "skipped": self.skipped, "tasks_per_s": tasks_per_s,
                 "workers": self.driver.backend.workers}
        if self._validation is not None:  # the latest validation in this window
            entry["validation_loss"], self._validation = self._validation, None
        if window:
            entry["meta_loss"] = sum(w[0] for w in window) / len(window)
            entry["metric"] = sum(w[2] for w in window) / len(window)
        curves = [w[1] for w in window if w[1] is not None]  # the window's iterations that computed one
        if curves:
            entry["query_loss_per_step"] = [sum(c[s] for c in curves) / len(curves) for s in range(len(curves[0]))]
        fraction = self.driver.updated_fraction(self.params)
        if fraction is not None:
            entry["updated_fraction"] = fraction
        storage.append_line(self.run_dir / METRICS, json.dumps(entry))
        self.last_scalars = iteration_scalars(entry)
        self.emit("on_log", entry)
        second = self.family.curve_label
        loss_txt = f"meta-loss {entry['meta_loss']:.4f}" if window else "meta-loss n/a (all steps skipped)"
        if "query_loss_per_step" in entry:
            loss_txt += f" | {second[0]} {entry['query_loss_per_step'][second[1]]:.4f}"
        frac_txt = f" | updated {fraction['overall']:.2f}" if fraction else ""
        self.log(f"[{cfg.method}] it {self.iteration:>{len(str(cfg.iterations))}}/{cfg.iterations} | {loss_txt}"
                 f" | {tasks_per_s:,.{0 if tasks_per_s >= 10 else 2}f} tasks/s | ETA {_hms(eta)}"
                 f" | skipped {self.skipped}{frac_txt}")

    # -- evaluation and results --------------------------------------------------------------
    def evaluate(self, *, tasks=None, shots=None, seed=None) -> dict:
        """The evaluation table of the run's parameters (train.validate_every's choice, if any)."""
        e = self.cfg.eval
        params = self.selected["params"] if self.selected else self.params
        return self.family.evaluate(self.experiment, self.driver.eval_backend(self), params, self.cfg,
                                    tasks=tasks or e.tasks, shots=shots or e.shots,
                                    seed=e.seed if seed is None else seed)

    def finish(self) -> dict:
        """Evaluated, results.json written, then the plots and the hooks' records (`decorate`)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        table = self.evaluate()
        trained_on = self.driver.backend
        results = {
            "status": self.status, "method": cfg.method, "family": self.family.name, "task": cfg.task.name,
            "seed": cfg.seed,
            "iterations": self.iteration, "skipped_steps": self.skipped, "metric": metric_name(self.experiment),
            "backend": trained_on.name, "workers": trained_on.workers, "placement": trained_on.placement,
            "worker_restarts": trained_on.restarts, "worker_changes": trained_on.changes,
            "eval": {"tasks": cfg.eval.tasks, "inner_steps": cfg.eval.inner_steps, "mask": cfg.eval.mask,
                     "seed": cfg.eval.seed, "split": cfg.eval.split, "seconds": time.perf_counter() - t0},
            "results": table,
            "updated_fraction": self.experiment.updated_fraction(self.params),
        }
        if self.validations:
            results["validation"] = {"every": cfg.train.validate_every, "tasks": cfg.train.validate_tasks,
                                     "selected_iteration": self.selected["iteration"] if self.selected else None,
                                     "history": [[i, finite_or_none(v)] for i, v in self.validations]}
        if self.rungs:
            results["halving"] = self.rungs
        if self.lineage:
            results["pbt"] = {"lineage": self.lineage, "final": self.hyperparams()}
        # Results before decorations: results.json is on disk before any plot is drawn or model
        # logged, so a failing plot or a full disk loses nothing that was computed.
        results["plots"] = []
        self._write_results(results)
        self.log(format_table(table, results["metric"], header=self.header(results)))
        return self.decorate(results)

    def stopped_results(self) -> dict:
        """results.json of a run a halving scheduler stopped: its status, iteration and rungs, no
        evaluation (its checkpoint evaluates with `metatrain eval`, or continues with `resume`)."""
        cfg = self.cfg
        results = {"status": self.status, "method": cfg.method, "family": self.family.name, "task": cfg.task.name,
                   "seed": cfg.seed, "iterations": self.iteration, "skipped_steps": self.skipped,
                   "metric": metric_name(self.experiment), "results": {}, "halving": self.rungs, "plots": []}
        self._write_results(results)
        return results

    def decorate(self, results: dict) -> dict:
        """The plots (if asked and not drawn yet), then the hooks' on_finish (MLflow's records)."""
        if self.cfg.train.plots and not results["plots"]:
            try:
                results["plots"] = [str(p.relative_to(self.run_dir)) for p in write_run_plots(self, results)]
                self._write_results(results)
            except Exception as e:  # noqa: BLE001 - a figure is a decoration; the results are saved
                self.log(f"plots: not written ({_one_line(e)}); {RESULTS} and {CHECKPOINT} are saved in "
                         f"{self.run_dir}; free space and run `metatrain resume {self.run_dir}` to plot")
        self.emit("on_finish", results)
        return results

    def _write_results(self, results: dict) -> None:
        storage.write_text(self.run_dir / RESULTS, json.dumps(results, indent=2))  # never a half-written one

    def header(self, results: dict) -> str:
        return self.family.header(results, self.experiment)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
