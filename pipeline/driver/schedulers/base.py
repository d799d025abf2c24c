"""The scheduler interface: when a decision is due, and the decision itself."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Decision:
    """What a scheduler decided at one iteration; members are named by their index in the population.

    stop: running members that stop here (they keep their state and checkpoint, and leave the
      stacked computation with any member that diverged).
    copies: {recipient: donor}: the recipient takes the donor's parameters, Adam moments and step count.
    values: {member: {key: value}}: new values of MUTABLE keys (pipeline/config.py).
    entries: {member: entry}: each ranked member's record at this decision (metrics.jsonl and the
      run's hooks: MLflow's metric series).
    history: {member: entry}: appended to the member's `history` list of this scheduler (its
      checkpoint and results.json: halving's rungs, PBT's lineage).
    line: one progress line saying what was decided.
    """

    stop: tuple[int, ...] = ()
    copies: dict[int, int] = field(default_factory=dict)
    values: dict[int, dict] = field(default_factory=dict)
    entries: dict[int, dict] = field(default_factory=dict)
    history: dict[int, dict] = field(default_factory=dict)
    line: str = ""


class MemberScheduler:
    """The no-op default: never due, so a population without a scheduler trains every member to the end.

    A scheduler decides at its due iterations, from the running members' validation losses
    (`val_loss`, lower is better; NaN for a member whose validation failed) and metrics, their
    current values (`values`: MUTABLE keys) and run names (`names`, for the line).

    Example:
        >>> from pipeline.driver.schedulers import Halving
        >>> s = Halving(grace_period=8, reduction_factor=2.0)
        >>> s.due(8, 40), s.due(9, 40), MemberScheduler().due(8, 40)
        (True, False, False)
    """

    history_key = ""  # the member's list this scheduler's history goes to: "rungs" | "lineage"
    stops_members = False  # members may leave the stacked computation (its row count shrinks)
    before_save = False  # decide before the members save this iteration (the checkpoint holds the decision)

    def due(self, done: int, iterations: int) -> bool:
        """A decision after iteration `done` of a run of `iterations`."""
        return False

    def decide(self, done: int, val_loss: dict[int, float], val_metric: dict[int, float], values: dict[int, dict],
               names: dict[int, str], val_tasks: int) -> Decision:
        return Decision()

    def progress(self, live: int, stopped: int) -> str:
        """The population's progress line's suffix (e.g. ' | live 4, stopped 4')."""
        return ""

    def progress_entry(self) -> dict:
        """Scalars for the population's progress entry (Tune's and MLflow's series)."""
        return {}
