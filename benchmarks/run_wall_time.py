"""A finished run's wall time as its own files record it: the training windows of metrics.jsonl
(each logged line covers its iterations x meta-batch / tasks_per_s seconds, validation included)
plus the evaluation's seconds in results.json. Start-up (imports, Ray, data) is not included.

    python benchmarks/run_wall_time.py RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.driver.run_dir import read_metrics  # noqa: E402


def wall_time(run: Path) -> tuple[float, float]:
    """(training seconds, evaluation seconds) of a run directory."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    train, done = 0.0, 0
    for entry in read_metrics(run):
        if "tasks_per_s" in entry and entry["tasks_per_s"]:
            train += (entry["iteration"] - done) * cfg["meta_batch_size"] / entry["tasks_per_s"]
            done = entry["iteration"]
    return train, json.loads((run / "results.json").read_text())["eval"]["seconds"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (config.yaml, metrics.jsonl, results.json)")
    for run in p.parse_args(argv).runs:
        train, evaluation = wall_time(run)
        print(f"{run}: training {train / 60:.1f} min + evaluation {evaluation / 60:.1f} min = "
              f"{(train + evaluation) / 60:.1f} min")


if __name__ == "__main__":
    main()
