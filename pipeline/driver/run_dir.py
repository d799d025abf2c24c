"""The layout of a run directory: the one place its file names are spelled. Every module that
reads or writes a run's files (trainer, checkpoint, tracking, plots, report, cli) names them here."""
CONFIG = "config.yaml"  # the validated config the run was started with
METRICS = "metrics.jsonl"  # one JSON line per logged iteration window
RESULTS = "results.json"  # the final evaluation; written before any plot or model logging
CHECKPOINT = "checkpoint.pt"  # the newest checkpoint
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"  # the one before it: the fallback when the newest is damaged
PLOTS = "plots"  # folder of the run's figures
MLFLOW_RUN = "mlflow.json"  # {tracking_uri, experiment_id, run_id} of the run's MLflow run


def read_metrics(run_dir) -> list[dict]:
    """The run's metrics.jsonl entries, oldest first ([] before the first)."""
    import json
    from pathlib import Path

    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def check_run_dir(path, need_checkpoint: bool = False) -> None:
    """One line for a RUN_DIR argument that names no run: a path that does not exist (with the
    closest run directory beside it), a sweep directory (pointing to its trials/), a folder
    without CONFIG (or, if asked, without CHECKPOINT). ConfigError, before any work starts."""
    from pathlib import Path

    from tasks.errors import ConfigError, closest

    path = Path(path)
    if not path.exists():
        beside = [p.name for p in path.parent.iterdir() if (p / CONFIG).is_file()] if path.parent.is_dir() else []
        match = closest(path.name, beside)
        hint = f"did you mean {str(path.parent / match)!r}?" if match else f"a run is a folder with a {CONFIG}"
        raise ConfigError(f"RUN_DIR: {path} does not exist; {hint}")
    if (path / "sweep.yaml").is_file() and (path / "trials").is_dir():  # sweeps/record.py: SPEC, TRIALS
        trials = sorted(p.name for p in (path / "trials").iterdir() if (p / CONFIG).is_file())
        example = f", e.g. {path / 'trials' / trials[0]}" if trials else ""
        raise ConfigError(f"RUN_DIR: {path} is a sweep directory; its runs are the folders in {path / 'trials'}"
                          f"{example} (`metatrain report {path}` tabulates them all)")
    if not (path / CONFIG).is_file():
        raise ConfigError(f"RUN_DIR: {path} is not a run directory (no {CONFIG})")
    if need_checkpoint and not (path / CHECKPOINT).is_file():
        raise ConfigError(f"RUN_DIR: {path} has no {CHECKPOINT}")
