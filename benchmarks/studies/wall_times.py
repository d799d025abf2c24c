"""Wall time and throughput of each study, read back from the MLflow runs the sweeps logged.

For each sweep (parent run): its wall time, the number of trials, the summed trial time (the work
the machine did: summed / wall is how many trials really ran side by side) and the mean tasks/s
of its trials (the `tasks_per_s` metric, one point per log interval).
Usage:  python benchmarks/studies/wall_times.py TRACKING_URI EXPERIMENT [EXPERIMENT ...]
        (e.g. sqlite:///$PWD/sweeps/mlflow.db robustness_alpha sine_models)
"""
from __future__ import annotations

import statistics
import sys

from mlflow import MlflowClient


def minutes(ms: float) -> str:
    return f"{ms / 60000:.1f} min"


def main(uri: str, names: list[str]) -> None:
    client = MlflowClient(tracking_uri=uri)
    print("| study | wall | trials | trial time (median) | summed trial time | side by side | tasks/s per trial |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id], max_results=10000)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags and r.info.end_time]
        wall = sum(p.info.end_time - p.info.start_time for p in parents if p.info.end_time)
        spans = [t.info.end_time - t.info.start_time for t in trials]
        rates = [statistics.fmean(m.value for m in client.get_metric_history(t.info.run_id, "tasks_per_s"))
                 for t in trials]
        print(f"| {name} | {minutes(wall)} | {len(trials)} | {minutes(statistics.median(spans))} | "
              f"{minutes(sum(spans))} | {sum(spans) / wall:.2f} | {statistics.fmean(rates):,.0f} "
              f"({min(rates):,.0f}-{max(rates):,.0f}) |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
