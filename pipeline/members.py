"""A population as one config plus a member table: `PopulationSpec`.

Members of a population share every key but the PACKABLE ones (pipeline/config.py): the step
sizes, the Gumbel temperature, the seeds and where each run lies. The spec holds the shared
`Config` once and, per member, a row of those keys. Schedulers change rows (PBT's new values,
halving's narrowing), never configs, and Ray workers receive rows, not rebuilt configs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from pipeline.config import MUTABLE, PACKABLE, Config, ConfigError, load_config
from pipeline.yaml_dataclasses import flatten, get_key, set_key, to_dict


@dataclass
class PopulationSpec:
    """Arguments:
        base: the shared config (its PACKABLE keys are member 0's).
        rows: per member, {key: value} of every PACKABLE key.

    Example:
        >>> from pipeline.config import load_config
        >>> spec = PopulationSpec.from_configs([load_config(None, {"alpha": a, "seed": s})
        ...                                     for a, s in ((0.01, 0), (0.1, 1))])
        >>> spec.column("alpha"), spec.config(1).seed
        ([0.01, 0.1], 1)
        >>> spec.select([1]).column("seed")
        [1]
    """

    base: Config
    rows: list[dict]

    @classmethod
    def from_configs(cls, cfgs: list[Config]) -> PopulationSpec:
        """The spec of members' configs; one line naming the first key (other than PACKABLE ones)
        in which a member differs from member 0."""
        if not cfgs:
            raise ConfigError("population: no members")
        base, *others = cfgs
        first = flatten(to_dict(base))
        for i, cfg in enumerate(others, 1):
            for key, value in flatten(to_dict(cfg)).items():
                if key not in PACKABLE and value != first.get(key):
                    raise ConfigError(f"population: member {i} differs from member 0 in {key} ({value!r} vs "
                                      f"{first.get(key)!r}); members may differ only in {', '.join(PACKABLE)}")
        return cls(copy.deepcopy(base), [{k: get_key(c, k) for k in PACKABLE} for c in cfgs])

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, key: str) -> list:
        return [row[key] for row in self.rows]

    def values(self, i: int) -> dict:
        """Member i's MUTABLE values (what a scheduler may change)."""
        return {k: self.rows[i][k] for k in MUTABLE}

    def set_values(self, i: int, values: dict) -> None:
        self.rows[i].update({k: values[k] for k in MUTABLE if k in values})

    def config(self, i: int) -> Config:
        """Member i's whole config (a new object): the base with its row."""
        cfg = copy.deepcopy(self.base)
        for key, value in self.rows[i].items():
            set_key(cfg, key, value)
        return cfg

    def select(self, rows: list[int]) -> PopulationSpec:
        """The spec of members `rows` (in this order)."""
        return PopulationSpec(self.base, [dict(self.rows[r]) for r in rows])

    def to_wire(self) -> dict:
        """Plain data for a Ray worker: the base config's dict and the rows."""
        return {"base": to_dict(self.base), "rows": [dict(r) for r in self.rows]}

    @classmethod
    def from_wire(cls, wire: dict) -> PopulationSpec:
        return cls(load_config(wire["base"]), [dict(r) for r in wire["rows"]])
