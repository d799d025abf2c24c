"""What observes a run, and the scalars it sees: torch-free, so that the tracking process
(pipeline/tracking.py) and the sweep report import it without the driver's heavy modules."""
from __future__ import annotations

import math


def iteration_scalars(entry: dict) -> dict[str, float]:
    """A metrics.jsonl entry (or a population's progress entry) as flat scalars: the names MLflow
    and Tune both see."""
    names = {"skipped": "skipped_steps", "tasks_per_s": "tasks_per_s", "validation_loss": "validation_loss",
             "meta_loss": "meta_loss", "metric": "query_metric", "diverged": "diverged", "stopped": "stopped",
             "val_loss": "val_loss", "val_metric": "val_metric",
             "alpha": "alpha", "beta": "beta", "gumbel_temperature": "gumbel_temperature",  # PBT's schedules
             "exploits": "pbt_exploits", "workers": "workers"}
    out = {name: entry[key] for key, name in names.items() if key in entry}
    out.update({f"query_loss_step{s}": v for s, v in enumerate(entry.get("query_loss_per_step", []))})
    for cell, v in (entry.get("updated_fraction") or {}).items():
        out["updated_fraction" if cell == "overall" else f"updated_fraction_{cell}"] = v
    return out


def eval_scalars(results: dict) -> dict[str, float]:
    """The evaluation table as flat scalars (eval_K10_mean, eval_K10_ci95, eval_K10_before)."""
    out = {}
    for k, r in results["results"].items():
        row = f"K{k}" if k.isdigit() else k  # K for few-shot methods, the optimizer's name for learned optimizers
        for name, key in (("mean", "mean"), ("ci95", "ci95"), ("before", "before_adaptation")):
            out[f"eval_{row}_{name}"] = math.nan if r[key] is None else r[key]
        for name in ("mean", "ci95"):  # eval_adam_unseen_mean: on images never trained on
            if name in r.get("unseen", {}):
                v = r["unseen"][name]
                out[f"eval_{row}_unseen_{name}"] = math.nan if v is None else v
    return out


class RunHook:
    """Observer of one run's record; every method is optional."""

    def on_setup(self, run) -> None: ...  # the config and data checked; the backend starts next
    def on_start(self, run, resumed: bool) -> None: ...
    def on_log(self, run, entry: dict) -> None: ...
    def on_replay(self, run, entries: list[dict]) -> None: ...  # a resumed run's earlier log
    def on_checkpoint(self, run) -> None: ...
    def on_finish(self, run, results: dict) -> None: ...
    def on_abort(self, run, error: BaseException) -> None: ...


class DriverHook:
    """What a driver (Trainer or Population) reports beside its runs' own hooks: Tune's progress,
    checkpoints and final report. `driver` answers `base` (the config every run shares), `runs`
    (its RunRecords), `iteration` and `states()`."""

    def on_log(self, driver, entry: dict) -> None: ...
    def on_checkpoint(self, driver) -> None: ...
    def on_finish(self, driver, results: list[dict]) -> None: ...
