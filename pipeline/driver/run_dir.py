"""The layout of a run directory: the one place its file names are spelled. Every module that
reads or writes a run's files (trainer, checkpoint, tracking, plots, report, cli) names them here."""
CONFIG = "config.yaml"  # the validated config the run was started with
METRICS = "metrics.jsonl"  # one JSON line per logged iteration window
RESULTS = "results.json"  # the final evaluation; written before any plot or model logging
CHECKPOINT = "checkpoint.pt"  # the newest checkpoint
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"  # the one before it: the fallback when the newest is damaged
PLOTS = "plots"  # folder of the run's figures
MLFLOW_RUN = "mlflow.json"  # {tracking_uri, experiment_id, run_id} of the run's MLflow run
