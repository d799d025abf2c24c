"""MLflow tracking for `train` runs and sweep trials: a hook on each run's record (RunHook).

A run logs the flattened config as params; tags (method, task, seed, status, git commit); every
logged iteration's scalars; the final evaluation (scalars and a table); artifacts (config.yaml,
results.json, metrics.jsonl, checkpoint.pt, plots/) and the meta-learned network through
`mlflow.pytorch.log_model`, and the pyfunc model that adapts to a posted few-shot episode
(`adapt_model`, pipeline/serve/serving.py). A run directory remembers its MLflow run in `mlflow.json`, so a
resumed run or a retried sweep trial continues the same MLflow run instead of leaving orphans behind.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import torch

from pipeline import storage
from pipeline.config import Config, ConfigError
from pipeline.core import learners
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


class MetaLearnedNetwork(torch.nn.Module):
    """The meta-learned initialisation as a plain module for `mlflow.pytorch.log_model`:
    forward(x) is the network before adaptation. Adapting it needs the update rule and its
    meta-parameters, which `checkpoint.pt` and `metatrain eval` carry."""

    def __init__(self, net, params: dict):
        super().__init__()
        self.net, self.names = net, list(params)
        for k, v in params.items():
            self.register_parameter(k.replace(".", "__"), torch.nn.Parameter(v.detach().clone(), requires_grad=False))

    def forward(self, x):
        return learners.forward(self.net, {k: getattr(self, k.replace(".", "__")) for k in self.names}, x)


def log_model(uri: str, run_id: str, record) -> str:
    """Log the meta-learned network (MLflow's pt2 format: a torch.export graph, no pickled code)."""
    import mlflow
    from mlflow.models import infer_signature

    from pipeline.serve.serving import quiet_downloads

    cfg, exp = record.cfg, record.experiment
    params = {k: v.detach().cpu() for k, v in record.params.items()}
    batch = exp.sample(params, split="test", seed=cfg.eval.seed, iteration=0, indices=range(1), shots=cfg.task.shots)
    x = batch["x_support"][0]
    model = MetaLearnedNetwork(exp.learner.net, params).eval()
    with torch.no_grad():
        y = model(x)
    mlflow.set_tracking_uri(uri)
    with quiet_downloads(), mlflow.start_run(run_id=run_id):
        # validate_serving_input=False: MLflow would load the export back and run the example only to
        # warn on failure (0.2-0.3 s a run); tests/integration/test_tracking.py loads and runs it
        info = mlflow.pytorch.log_model(model, name="model", input_example=x.numpy(),
                                        signature=infer_signature(x.numpy(), y.numpy()), validate_serving_input=False,
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    return info.model_uri


def log_adapt_model(uri: str, run_id: str, record) -> str:
    """Log the pyfunc model that adapts to a posted episode (`pipeline.serve.serving`)."""
    import mlflow

    # imported here: defining the pyfunc model class loads mlflow.pyfunc at start-up
    from pipeline.serve import serving
    from pipeline.serve.adaptation import MetaLearnedRun

    run = MetaLearnedRun(record.cfg, {k: v.detach().cpu() for k, v in record.params.items()}, record.iteration)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        return serving.log(run)


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


_WORKER = None


def _import_mlflow() -> None:
    import mlflow  # noqa: F401 - a second or so, paid on the tracking thread
    from mlflow import MlflowClient  # noqa: F401

    empty_store()


def _prepare_model_logging() -> None:
    """What logging the models first costs a process, paid while the run trains (on Ray the driver
    mostly waits for its workers): MLflow's model flavours and torch.export imported, and MLflow's
    map of installed packages read from its cache (pipeline/installed_packages.py). Only a head
    start: whatever fails here is met again, and reported, where the models are logged."""
    try:
        import mlflow.pyfunc  # noqa: F401
        import mlflow.pytorch  # noqa: F401
        import torch.export  # noqa: F401

        from pipeline.distributed.head import state_file
        from pipeline.installed_packages import prepare_mlflow

        prepare_mlflow(state_file().parent)
    except Exception:  # noqa: BLE001, S110 - see the docstring
        pass


def _worker():
    """The one thread of this process that talks to MLflow, for every tracker (a population's
    members too): their calls never race for the store (SQLite allows one writer), and what is
    queued still runs at interpreter exit (concurrent.futures joins its threads)."""
    global _WORKER
    if _WORKER is None:
        from concurrent.futures import ThreadPoolExecutor

        _WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
    return _WORKER


def drain() -> None:
    """Wait for everything queued on the tracking thread and end it (a later tracker starts another)."""
    global _WORKER
    if _WORKER is not None:
        _WORKER.shutdown(wait=True)
        _WORKER = None


class MlflowTracker(RunHook):
    """Logs one Trainer to MLflow; `parent_run_id` nests it under a sweep's parent run.

    Every MLflow call runs on one background thread, in the order the hooks were called, so the
    run waits on MLflow only where it must: MLflow is imported once the trainer has checked its
    config and data, while it starts Ray and its workers; `on_start` waits for the store (a new
    SQLite store is a copy of an empty one, `build_new_sqlite_store`) and the MLflow run; metrics
    are logged as the run trains; `on_finish` logs the evaluation, artifacts and models and waits
    for them (logging the models while the plots are drawn was slower: both hold the GIL,
    benchmarks/RESULTS.md). An error on that thread is raised in the run at its next hook (or at
    the end)."""

    def __init__(self, cfg: Config, uri: str, *, run_name: str, experiment_id: str | None = None,
                 parent_run_id: str | None = None, tags: dict | None = None, log=print, force: bool = False):
        self.cfg, self.uri, self.run_name, self.log = cfg, uri, run_name, log
        self.experiment_id, self.parent_run_id, self.extra_tags = experiment_id, parent_run_id, tags or {}
        self.force = force  # log the evaluation again (a new record) even where one is logged at this iteration
        self.client = self.run_id = None
        self.logged: dict[str, int] = {}  # metric -> the last step MLflow holds (a reopened run's)
        self._pending: list = []

    # -- the background thread ------------------------------------------------------------------
    def _submit(self, fn, *args) -> None:
        self._raise_failed()
        self._pending.append(_worker().submit(fn, *args))

    def _raise_failed(self) -> None:
        """The first error of a finished background call, raised here (in the run's thread)."""
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for f in done:
            if f.exception() is not None:
                raise f.exception()

    def wait(self) -> None:
        """Until every MLflow call made so far has run; its first error is raised."""
        for f in list(self._pending):
            f.exception()  # waits
        self._raise_failed()

    def _open_store(self) -> None:
        self.client = client_for(self.uri)
        if self.experiment_id is None:
            self.experiment_id = ensure_experiment(self.uri, self.cfg.tracking.experiment)

    # -- hooks --------------------------------------------------------------------------------
    def on_setup(self, record) -> None:
        """The run's config and data are valid: MLflow is imported (and the empty store it copies
        new stores from built, once per machine) while the trainer starts Ray; nothing of the run is
        written before it starts (a refused worker count still leaves no store)."""
        self._submit(_import_mlflow)

    def on_start(self, record, resumed: bool) -> None:
        """Waits for the MLflow run: mlflow.json must name it before the run can be killed and retried
        (a retry then reopens it instead of leaving an orphan)."""
        self._submit(self._start, record.run_dir, record.iteration)
        self.wait()
        if self._logs_models(record):
            self._submit(_prepare_model_logging)

    def _logs_models(self, record) -> bool:
        return self.cfg.tracking.log_model and record.family.logs_model  # an optimizer is no network

    def _start(self, run_dir: Path, iteration: int) -> None:
        cfg = self.cfg
        if self.client is None:
            self._open_store()
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

    def on_log(self, record, entry: dict) -> None:
        self._submit(self._log_entry, dict(entry))

    def _log_entry(self, entry: dict) -> None:
        step = entry["iteration"]
        new = {k: v for k, v in iteration_scalars(entry).items() if step > self.logged.get(k, -1)}
        log_scalars(self.client, self.run_id, new, step)

    def on_replay(self, record, entries: list[dict]) -> None:
        for entry in entries:  # each filtered by what MLflow holds (self.logged, read by _start first)
            self.on_log(record, entry)

    def _log_models(self, record, run_dir: Path) -> None:
        try:
            ready = ready_models(self.client, self.run_id)
            for name, tag, logger in (("model", "model_uri", log_model),
                                      ("adapt_model", "adapt_model_uri", log_adapt_model)):
                self.client.set_tag(self.run_id, tag, ready.get(name) or logger(self.uri, self.run_id, record))
        except Exception as e:  # noqa: BLE001 - the run's results and checkpoint are kept regardless
            self.client.set_tag(self.run_id, "model_error", f"{type(e).__name__}: {e}"[:5000])
            self.log(f"mlflow: the model could not be logged ({type(e).__name__}: {_first_line(e)}); {RESULTS} "
                     f"and {CHECKPOINT} are saved in {run_dir}; `metatrain resume {run_dir}` logs it")

    def on_finish(self, record, results: dict) -> None:
        """The evaluation, artifacts and models, each logged once: what MLflow already holds for
        this run (a resume after a kill at any step) is checked before it is written."""
        if self._logs_models(record):
            self._submit(self._log_models, record, record.run_dir)
        self._submit(self._finish, record.run_dir, record.iteration, results)
        self.wait()

    def _finish(self, run_dir: Path, iteration: int, results: dict) -> None:
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

    def on_abort(self, record, error: BaseException) -> None:
        try:  # what was sent is written first (or failed: the abort is reported regardless)
            self.wait()
        except Exception:  # noqa: BLE001
            pass
        if self.run_id is None:
            return
        # Tune stops a trial (scheduler decision, sweep interrupted) by raising SystemExit(0) in it.
        stopped = isinstance(error, KeyboardInterrupt) or (isinstance(error, SystemExit) and not error.code)
        if stopped:
            self.client.set_tag(self.run_id, "status", "stopped")
        else:
            self.client.set_tag(self.run_id, "status", "error")
            self.client.set_tag(self.run_id, "error", f"{type(error).__name__}: {error}"[:5000])
        self.client.set_terminated(self.run_id, "KILLED" if stopped else "FAILED")
