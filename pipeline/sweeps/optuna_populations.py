"""Optuna proposing whole populations: a Tune `Searcher` whose every Tune trial is one population,
each member one Optuna trial (TPE with the constant liar, seeded by the sweep seed), every member
told its own final metric when the population's Tune trial completes. Tune stays the orchestrator:
trials, resources, retries and resume are Tune's; this only says what each population trains.

Deterministic: populations are asked for in rounds of `concurrency` (the sweep's
max_concurrent_trials; 0 = all at once), a round only once every earlier population has been told,
so the proposals do not depend on which trial happens to finish first. The study's record (each
member's values and told metric) is written to `optuna.json` in the sweep directory."""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import optuna
from ray.tune.search import Searcher

from pipeline import storage

RECORD = "optuna.json"


def distributions(space: dict) -> dict:
    """The sweep's sampled entries as Optuna distributions (randint's upper bound exclusive, as Tune's)."""
    out = {}
    for key, entry in space.items():
        (kind, values), = entry.items()
        out[key] = {"choice": lambda v: optuna.distributions.CategoricalDistribution(v),
                    "uniform": lambda v: optuna.distributions.FloatDistribution(v[0], v[1]),
                    "loguniform": lambda v: optuna.distributions.FloatDistribution(v[0], v[1], log=True),
                    "randint": lambda v: optuna.distributions.IntDistribution(v[0], v[1] - 1)}[kind](values)
    return out


class PopulationSearch(Searcher):
    def __init__(self, space: dict, sizes: list[int], metric: str, mode: str, seed: int, concurrency: int,
                 record_dir: str):
        super().__init__(metric=metric, mode=mode)
        self.space, self.sizes, self.seed = distributions(space), list(sizes), seed
        self.concurrency = concurrency or len(self.sizes)
        self.record = str(Path(record_dir) / RECORD)
        self.study = optuna.create_study(direction="minimize" if mode == "min" else "maximize",
                                         sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True))
        self.proposed = 0  # populations handed to Tune so far
        self.open: dict[str, list[int]] = {}  # Tune trial id -> its members' Optuna trial numbers

    def suggest(self, trial_id: str):
        if self.proposed >= len(self.sizes):
            return Searcher.FINISHED
        if self.open and self.proposed % self.concurrency == 0:
            return None  # the next round waits until every population so far has been told
        asked = [self.study.ask(self.space) for _ in range(self.sizes[self.proposed])]
        self.proposed += 1
        self.open[trial_id] = [t.number for t in asked]
        return {"members": [dict(t.params) for t in asked]}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        numbers = self.open.pop(trial_id, [])
        finals = json.loads(result["members_final"]) if result and "members_final" in result else []
        for i, number in enumerate(numbers):
            value = finals[i].get(self.metric) if i < len(finals) and not error else None
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.study.tell(number, value)
            else:  # a failed trial, a stopped or diverged member: no value to learn from
                self.study.tell(number, state=optuna.trial.TrialState.FAIL)
        self._write_record()

    def _write_record(self) -> None:
        rows = [{"number": t.number, "params": t.params, "value": t.value, "state": t.state.name}
                for t in self.study.get_trials(deepcopy=False)]
        storage.write_text(Path(self.record), json.dumps(rows, indent=2))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
