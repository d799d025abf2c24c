"""MLflow tracking for `train` runs and sweep trials: a hook on each run's record (RunHook).

A run logs the flattened config as params; tags (method, task, seed, status, git commit); every
logged iteration's scalars; the final evaluation (scalars and a table); artifacts (config.yaml,
results.json, metrics.jsonl, checkpoint.pt, plots/) and the meta-learned network through
`mlflow.pytorch.log_model`, and the pyfunc model that adapts to a posted few-shot episode
(`adapt_model`, pipeline/serve/serving.py). A run directory remembers its MLflow run in `mlflow.json`, so a
resumed run or a retried sweep trial continues the same MLflow run instead of leaving orphans behind.
"""
from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import math
import os
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pipeline import storage
from pipeline.config import Config, ConfigError
from pipeline.driver.hooks import RunHook, eval_scalars, iteration_scalars
from pipeline.driver.run_dir import CHECKPOINT, CONFIG, METRICS, MLFLOW_RUN, PLOTS, RESULTS
from pipeline.yaml_dataclasses import flatten, to_dict

RUN_FILE = MLFLOW_RUN
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_uri(output_dir: str | Path) -> str:
    """MLflow's embedded store: an absolute SQLite path (a Tune trial runs in its own cwd)."""
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def resolve_uri(uri: str | None, output_dir: str | Path) -> str:
    """The tracking URI to use: `uri` if given, else the default store in `output_dir`."""
    uri = uri or default_uri(output_dir)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # a relative SQLite path would move with the working directory: pin it now
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def _artifact_location(uri: str) -> str | None:
    """SQLite stores keep artifacts beside the database (MLflow's default, ./mlruns, is relative
    to the cwd); a tracking server chooses its own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def client_for(uri: str):
    import mlflow
    from mlflow import MlflowClient

    build_new_sqlite_store(uri)
    mlflow.set_tracking_uri(uri)  # the fluent API (log_model) reads the global URI
    return MlflowClient(tracking_uri=uri)


def build_new_sqlite_store(uri: str) -> None:
    """A new SQLite store is a copy of an empty one of this MLflow version, linked into place
    (never over a store another process made meanwhile). MLflow's migrations, seconds on a new
    store, run once per machine and version (`empty_store`); a kill never leaves a half-built store."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    if path.exists():
        return
    import shutil
    import sqlite3

    template = empty_store()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        shutil.copyfile(template, tmp)
        with contextlib.closing(sqlite3.connect(tmp)) as db, db:  # as MLflow names the Default experiment's
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",  # folder: here
                       (str(Path.cwd() / "mlruns" / "0"),))
        _link_into_place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _link_into_place(tmp: Path, path: Path) -> None:
    """`path` becomes the complete file `tmp`, unless a store appeared there meanwhile (kept)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass


def empty_store() -> Path:
    """An empty SQLite store of this MLflow version ($METATRAIN_HOME/mlflow-<version>.db), built by
    MLflow's own migrations the first time, in a temporary file linked into place when complete."""
    import mlflow
    from mlflow import MlflowClient

    from pipeline.distributed.head import state_file

    path = state_file().parent / f"mlflow-{mlflow.__version__}.db"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)  # creates every table
        _link_into_place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, created if missing (on the driver, before trials race for it)."""
    from mlflow.exceptions import MlflowException

    client = client_for(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri))
    except MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


def check_reachable(uri: str) -> None:
    """Fail early, in one line, when a tracking server does not answer."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).read()
    except Exception as e:  # noqa: BLE001 - any failure means the same thing to the user
        raise ConfigError(f"--tracking-uri: no MLflow server answers at {uri} ({type(e).__name__}: {e})") from None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def start_run(client, experiment_id: str, *, run_name: str, tags: dict, params: dict) -> str:
    """A new run with its params and tags (and the git commit of this checkout, if any)."""
    from mlflow.entities import Param, RunTag

    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    items = [Param(k, _param_value(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i:i + 100])
    commit = git_commit()
    if commit:
        client.log_batch(run_id, tags=[RunTag("git_commit", commit), RunTag("mlflow.source.git.commit", commit)])
    return run_id


def recorded_run(run_dir: Path, uri: str) -> str | None:
    """The MLflow run this run directory already logs to at `uri`, if any."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    return rec["run_id"] if rec.get("tracking_uri") == uri else None


def close_recorded_run(run_dir: Path, uri: str, status: str, run_status: str, error: str = "") -> None:
    """Driver-side: end a run whose own process could not (a trial stopped or failed for good)."""
    run_id = recorded_run(run_dir, uri)
    if run_id is None:
        return
    client = client_for(uri)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, "status", status)
        if error:
            client.set_tag(run_id, "error", error[:5000])
        client.set_terminated(run_id, run_status)


def _param_value(v) -> str:
    return str(v)[:6000]


def log_scalars(client, run_id: str, scalars: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for k, v in scalars.items() if v is not None]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


@dataclass
class LoggedNetwork:
    """What the tracking process needs to log a run's models, as plain data from the run: its
    config, meta-parameters (name -> numpy array), iteration and an input example (the inputs of one
    test task's support set)."""

    cfg: Config
    params: dict
    iteration: int
    example: object

    @classmethod
    def of(cls, record) -> LoggedNetwork:
        cfg, exp = record.cfg, record.experiment
        params = {k: v.detach().cpu() for k, v in record.params.items()}
        batch = exp.sample(params, split="test", seed=cfg.eval.seed, iteration=0, indices=range(1),
                           shots=cfg.task.shots)
        return cls(cfg, {k: v.numpy() for k, v in params.items()}, record.iteration, batch["x_support"][0].numpy())

    def tensors(self) -> dict:
        import torch

        return {k: torch.from_numpy(v) for k, v in self.params.items()}


def log_model(uri: str, run_id: str, network: LoggedNetwork) -> str:
    """Log the meta-learned network (MLflow's pt2 format: a torch.export graph, no pickled code)."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    from pipeline.serve.adaptation import MetaLearnedNetwork
    from pipeline.serve.serving import quiet_downloads
    from pipeline.shards.experiment import make_learner

    x = torch.from_numpy(network.example)
    model = MetaLearnedNetwork(make_learner(network.cfg).net, network.tensors()).eval()
    with torch.no_grad():
        y = model(x)
    mlflow.set_tracking_uri(uri)
    with quiet_downloads(), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(model, name="model", input_example=x.numpy(),
                                        signature=infer_signature(x.numpy(), y.numpy()),
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    return info.model_uri


def log_adapt_model(uri: str, run_id: str, network: LoggedNetwork) -> str:
    """Log the pyfunc model that adapts to a posted episode (`pipeline.serve.serving`)."""
    import mlflow

    # imported here: defining the pyfunc model class loads mlflow.pyfunc at start-up
    from pipeline.serve import serving
    from pipeline.serve.adaptation import MetaLearnedRun

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        return serving.log(MetaLearnedRun(network.cfg, network.tensors(), network.iteration))


EVAL_TABLE = "eval_table.json"


def evaluation_logged(logged: dict[str, int], results: dict, iteration: int) -> bool:
    """Every evaluation scalar of `results` has a point at `iteration` (logged: logged_steps)."""
    return all(logged.get(k, -1) >= iteration for k in eval_scalars(results))


def has_eval_table(client, run_id: str) -> bool:
    return any(a.path == EVAL_TABLE for a in client.list_artifacts(run_id))


def logged_steps(client, run_id: str) -> dict[str, int]:
    """{metric: the last step MLflow holds} of a run: what a resumed run need not log again."""
    keys = client.get_run(run_id).data.metrics
    return {k: max((m.step for m in client.get_metric_history(run_id, k)), default=-1) for k in keys}


def ready_models(client, run_id: str) -> dict[str, str]:
    """{name: model URI} of the run's logged models that finished logging; one left half-logged by
    a kill (PENDING or FAILED) is deleted, so that the model is logged again exactly once."""
    from mlflow.entities import LoggedModelStatus

    run = client.get_run(run_id)
    ready = {}
    for m in client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run_id}'"):
        if m.status == LoggedModelStatus.READY and m.name not in ready:
            ready[m.name] = m.model_uri
        else:
            client.delete_logged_model(m.model_id)
    return ready


def missing_records(run_dir: Path, uri: str, results: dict, log_models: bool) -> list[str]:
    """What a finished run's MLflow run lacks of what `on_finish` logs (its evaluation, table,
    models, final status); [] when complete. A run never logged (no mlflow.json) lacks everything."""
    run_id = recorded_run(run_dir, uri)
    if run_id is None:
        return ["the run"]
    client = client_for(uri)
    run = client.get_run(run_id)
    missing = []
    if not evaluation_logged(logged_steps(client, run_id), results, results["iterations"]):
        missing.append("evaluation")
    if not has_eval_table(client, run_id):
        missing.append("evaluation table")
    if log_models:
        ready = ready_models(client, run_id)
        missing += [name for name in ("model", "adapt_model") if name not in ready]
    # the tag is set last; MLflow's own status is not enough (log_model's fluent run ends it FINISHED)
    if run.data.tags.get("status") != results["status"] or \
            run.info.status != ("FINISHED" if results["status"] == "completed" else "FAILED"):
        missing.append("final status")
    return missing


_PROCESS = None
_RUNS: dict[int, TrackedRun] = {}  # in the tracking process: each tracker's run, by its key
_KEYS = itertools.count()


class TrackingError(RuntimeError):
    """MLflow's records of a run could not be written (the run's own files are kept): one line."""


def tracking_process():
    """This process's tracking process (pipeline/tracking_process.py), started on first use."""
    global _PROCESS
    from pipeline.tracking_process import TrackingProcess

    if _PROCESS is None or _PROCESS.ended:
        _PROCESS = TrackingProcess()
    return _PROCESS


def prepare(models: bool = True) -> None:
    """Start the tracking process and its MLflow import now (a command calls it before importing
    torch: the two then load on two cores); `models`: what logging the models needs (torch among
    it) is imported there too, beside its calls, so that it is ready by the run's end."""
    tracking_process().submit("pipeline.tracking:import_mlflow")
    if models:
        tracking_process().submit("pipeline.tracking:import_model_loggers_beside")


def drain() -> None:
    """Wait for everything sent to the tracking process and end it (a later tracker starts another)."""
    global _PROCESS
    if _PROCESS is not None:
        _PROCESS.close()
        _PROCESS = None


atexit.register(drain)  # a program's normal exit waits for what it sent, as it did for a thread


def import_mlflow() -> None:
    """In the tracking process: MLflow and the empty store new stores are copied from."""
    import mlflow  # noqa: F401
    from mlflow import MlflowClient  # noqa: F401

    empty_store()


def call(key: int, setup: tuple, method: str, *args) -> list[str]:
    """In the tracking process: `method` of tracker `key`'s TrackedRun (made from `setup` on its
    first call); the lines it printed, for the run's own output."""
    run = _RUNS.get(key) or _RUNS.setdefault(key, TrackedRun(*setup))
    lines = []
    run.log = lines.append
    try:
        getattr(run, method)(*args)
    finally:
        run.log = print
    if method in ("finish", "abort"):
        _RUNS.pop(key, None)
    return lines


class MlflowTracker(RunHook):
    """Logs one run to MLflow; `parent_run_id` nests it under a sweep's parent run.

    Every MLflow call is made by the tracking process (pipeline/tracking_process.py), in the order
    the hooks were called, so the run waits on MLflow only where it must: `on_start` waits for the
    MLflow run (mlflow.json names it before the run can be killed and retried), metrics are logged
    as the run trains, `on_finish` sends the evaluation, artifacts and models and waits for them.
    An error there is raised in the run at its next hook (or at the end); the lines the process
    prints are printed by the run, in order.

    Example:
        >>> hook = MlflowTracker(cfg, resolve_uri(None, cfg.output_dir), run_name="r")   # doctest: +SKIP
        >>> Trainer(cfg, "runs/r", hooks=(hook,)).train()                                # doctest: +SKIP
    """

    def __init__(self, cfg: Config, uri: str, *, run_name: str, experiment_id: str | None = None,
                 parent_run_id: str | None = None, tags: dict | None = None, log=print, force: bool = False):
        self.cfg, self.uri, self.log = cfg, uri, log
        self.key, self.run_dir = next(_KEYS), None
        self._setup = (cfg, uri, run_name, experiment_id, parent_run_id, tags or {}, force)
        self._pending: list = []

    def _submit(self, method: str, *args) -> None:
        self._settle(wait=False)
        self._pending.append(tracking_process().submit("pipeline.tracking:call", self.key, self._setup, method, *args))

    def _settle(self, wait: bool) -> None:
        """Print the lines of the calls that returned, oldest first (every call's, when `wait`); the
        first error among them is raised once the lines before it are printed."""
        error = None
        while self._pending and (wait or self._pending[0].done()):
            try:
                for line in self._pending.pop(0).result():
                    self.log(line)
            except Exception as e:  # noqa: BLE001 - raised below, after the rest has run (wait)
                error = error or e
                if not wait:
                    break
        if error is not None:
            where = self.run_dir or "its run directory"
            raise TrackingError(f"mlflow: {error}; the run's files in {where} are kept; `metatrain resume {where}` "
                                "logs what MLflow lacks") from None

    def wait(self) -> None:
        """Until every MLflow call made so far has run; its first error is raised."""
        self._settle(wait=True)

    # -- hooks --------------------------------------------------------------------------------
    def on_setup(self, record) -> None:
        """The run's config and data are valid: MLflow is imported (if `prepare` did not) while the
        trainer starts Ray; nothing of the run is written before it starts."""
        tracking_process().submit("pipeline.tracking:import_mlflow")

    def on_start(self, record, resumed: bool) -> None:
        """Waits for the MLflow run: mlflow.json must name it before the run can be killed and retried
        (a retry then reopens it instead of leaving an orphan)."""
        self.run_dir = record.run_dir
        self._submit("start", record.run_dir, record.iteration)
        self.wait()

    def on_log(self, record, entry: dict) -> None:
        self._submit("log_entry", dict(entry))

    def on_replay(self, record, entries: list[dict]) -> None:
        for entry in entries:  # each filtered by what MLflow holds (read by `start` first)
            self.on_log(record, entry)

    def on_finish(self, record, results: dict) -> None:
        """The evaluation, artifacts and models, each logged once: what MLflow already holds for
        this run (a resume after a kill at any step) is checked before it is written."""
        if self.cfg.tracking.log_model and record.family.logs_model:  # an optimizer is no network
            self._submit("log_models", LoggedNetwork.of(record), record.run_dir)
        self._submit("finish", record.run_dir, record.iteration, results)
        self.wait()

    def on_abort(self, record, error: BaseException) -> None:
        # Tune stops a trial (scheduler decision, sweep interrupted) by raising SystemExit(0) in it.
        stopped = isinstance(error, KeyboardInterrupt) or (isinstance(error, SystemExit) and not error.code)
        try:  # what was sent is written first (or failed: the abort is reported regardless)
            self.wait()
        except Exception:  # noqa: BLE001
            pass
        try:
            self._submit("abort", stopped, f"{type(error).__name__}: {error}"[:5000])
            self.wait()
        except Exception:  # noqa: BLE001 - the tracking process is gone: the run stays "running" for resume
            pass


def import_model_loggers_beside() -> None:
    """In the tracking process: import_model_loggers on a thread of its own, while calls are served."""
    threading.Thread(target=import_model_loggers, name="import-model-loggers", daemon=True).start()


def import_model_loggers() -> None:
    """In the tracking process: what logging the models imports (torch, torch.export, MLflow's
    flavors), while the run trains."""
    import mlflow.pyfunc  # noqa: F401
    import mlflow.pytorch  # noqa: F401
    import torch.export  # noqa: F401

    from pipeline.serve import serving  # noqa: F401
    from pipeline.shards import experiment  # noqa: F401


class TrackedRun:
    """In the tracking process: one run's MLflow run, what it holds, and how each hook's record is
    written (MlflowTracker sends the calls)."""

    def __init__(self, cfg: Config, uri: str, run_name: str, experiment_id: str | None, parent_run_id: str | None,
                 tags: dict, force: bool):
        self.cfg, self.uri, self.run_name = cfg, uri, run_name
        self.experiment_id, self.parent_run_id, self.extra_tags = experiment_id, parent_run_id, tags
        self.force = force  # log the evaluation again (a new record) even where one is logged at this iteration
        self.client = self.run_id = None
        self.logged: dict[str, int] = {}  # metric -> the last step MLflow holds (a reopened run's)
        self.log = print

    def start(self, run_dir: Path, iteration: int) -> None:
        cfg = self.cfg
        if self.client is None:
            self.client = client_for(self.uri)
            if self.experiment_id is None:
                self.experiment_id = ensure_experiment(self.uri, cfg.tracking.experiment)
        self.run_id = recorded_run(run_dir, self.uri)
        if self.run_id is None:
            tags = {"method": cfg.method, "task": cfg.task.name, "seed": str(cfg.seed),
                    "run_dir": str(run_dir.resolve()), **self.extra_tags}
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            self.run_id = start_run(self.client, self.experiment_id, run_name=self.run_name, tags=tags,
                                    params=flatten(to_dict(cfg)))
            storage.write_text(run_dir / RUN_FILE, json.dumps(
                {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}, indent=2))
            reopened = False
        else:
            # Metrics are a pure function of config and seed: steps logged before a crash are
            # already there with the same values, so only later steps are logged again.
            self.client.update_run(self.run_id, status="RUNNING")
            self.logged = logged_steps(self.client, self.run_id)
            self.client.set_tag(self.run_id, "resumed_at_iteration", str(iteration))
            reopened = True
        self.client.set_tag(self.run_id, "status", "running")
        self.log(f"mlflow: {'reopened' if reopened else 'new'} run {self.run_id} at {self.uri}")

    def log_entry(self, entry: dict) -> None:
        step = entry["iteration"]
        new = {k: v for k, v in iteration_scalars(entry).items() if step > self.logged.get(k, -1)}
        log_scalars(self.client, self.run_id, new, step)

    def log_models(self, network: LoggedNetwork, run_dir: Path) -> None:
        try:
            ready = ready_models(self.client, self.run_id)
            for name, tag, logger in (("model", "model_uri", log_model),
                                      ("adapt_model", "adapt_model_uri", log_adapt_model)):
                self.client.set_tag(self.run_id, tag, ready.get(name) or logger(self.uri, self.run_id, network))
        except Exception as e:  # noqa: BLE001 - the run's results and checkpoint are kept regardless
            self.client.set_tag(self.run_id, "model_error", f"{type(e).__name__}: {e}"[:5000])
            self.log(f"mlflow: the model could not be logged ({type(e).__name__}: {_first_line(e)}); {RESULTS} "
                     f"and {CHECKPOINT} are saved in {run_dir}; `metatrain resume {run_dir}` logs it")

    def finish(self, run_dir: Path, iteration: int, results: dict) -> None:
        client, run_id = self.client, self.run_id
        if self.force or not evaluation_logged(self.logged, results, iteration):
            log_scalars(client, run_id, eval_scalars(results), iteration)
            if self.force:
                client.set_tag(run_id, "re_evaluated_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
        table = {"K": [], "mean": [], "ci95": [], "n": [], "before_adaptation": []}
        for k, r in results["results"].items():
            for col, v in (("K", int(k) if k.isdigit() else k), ("mean", r["mean"]), ("ci95", r["ci95"]), ("n", r["n"]),
                           ("before_adaptation", r["before_adaptation"])):
                table[col].append(math.nan if v is None else v)
        try:  # decorations: the results are on disk already, so a failure here is one line, not a crash
            if not has_eval_table(client, run_id):  # log_table appends
                client.log_table(run_id, data=table, artifact_file=EVAL_TABLE)
            for name in (CONFIG, RESULTS, METRICS, CHECKPOINT):  # the same path again replaces the file
                if (run_dir / name).is_file():
                    client.log_artifact(run_id, str(run_dir / name))
            if (run_dir / PLOTS).is_dir():
                client.log_artifacts(run_id, str(run_dir / PLOTS), PLOTS)
        except Exception as e:  # noqa: BLE001
            self.log(f"mlflow: artifacts not logged ({type(e).__name__}: {_first_line(e)}); {RESULTS} and "
                     f"{CHECKPOINT} are saved in {run_dir}; `metatrain resume {run_dir}` logs them")
        client.set_tag(run_id, "status", results["status"])
        # A diverged run is a result, not a crash: it keeps its metrics and is flagged FAILED.
        client.set_terminated(run_id, "FINISHED" if results["status"] == "completed" else "FAILED")
        browse = f" (browse: mlflow ui --backend-store-uri {self.uri})" if self.uri.startswith("sqlite:") else ""
        self.log(f"mlflow: logged run {run_id} at {self.uri}{browse}; plots in {run_dir / PLOTS}")

    def abort(self, stopped: bool, error: str) -> None:
        if self.run_id is None:
            return
        if stopped:
            self.client.set_tag(self.run_id, "status", "stopped")
        else:
            self.client.set_tag(self.run_id, "status", "error")
            self.client.set_tag(self.run_id, "error", error)
        self.client.set_terminated(self.run_id, "KILLED" if stopped else "FAILED")
