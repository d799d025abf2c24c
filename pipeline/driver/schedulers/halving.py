"""Synchronous successive halving (Jamieson & Talwalkar 2016; Ray Tune's ASHA without the
asynchrony): at each rung every running member is ranked by val_loss; the ceil(n / reduction_factor)
best continue (non-finite losses last, ties to the lower member index) and the rest stop."""
from __future__ import annotations

import math

from pipeline.driver.schedulers.base import Decision, MemberScheduler


class Halving(MemberScheduler):
    """Arguments:
        grace_period: the first rung's iteration.
        reduction_factor: > 1; rungs at grace_period * reduction_factor**k below the members' run
          length, and 1 / reduction_factor of the running members continue at each.

    Example:
        >>> s = Halving(grace_period=8, reduction_factor=2.0)
        >>> s.rungs(40)
        [8, 16, 32]
        >>> d = s.decide(8, {0: 0.5, 1: 0.2, 2: float("nan")}, dict.fromkeys(range(3), 0.0), {}, "abc", 16)
        >>> d.stop, d.line
        ((2,), 'halving at it 8: 2 of 3 running members continue by val_loss on 16 validation tasks; stopped: c')
    """

    history_key = "rungs"
    stops_members = True

    def __init__(self, grace_period: int, reduction_factor: float):
        self.grace_period, self.reduction = grace_period, reduction_factor

    def rungs(self, iterations: int) -> list[int]:
        """The rungs of a run of `iterations`."""
        g, f = self.grace_period, self.reduction
        return sorted({int(g * f ** k) for k in range(64) if g * f ** k < iterations})

    def due(self, done: int, iterations: int) -> bool:
        return done in self.rungs(iterations)

    def decide(self, done, val_loss, val_metric, values, names, val_tasks) -> Decision:
        running = sorted(val_loss)
        finite = {m: math.isfinite(val_loss[m]) for m in running}  # NaN compares as nothing: ranked apart
        ranked = sorted(running, key=lambda m: (not finite[m], val_loss[m] if finite[m] else 0.0, m))
        kept = set(ranked[:math.ceil(len(running) / self.reduction)])
        stop = tuple(m for m in running if m not in kept)
        entries = {m: {"iteration": done, "val_loss": val_loss[m], "val_metric": val_metric[m]} for m in running}
        line = (f"halving at it {done}: {len(kept)} of {len(running)} running members continue by val_loss on "
                f"{val_tasks} validation tasks; stopped: {', '.join(names[m] for m in stop) or 'none'}")
        return Decision(stop=stop, entries=entries, line=line,
                        history={m: {**entries[m], "kept": m in kept} for m in running})

    def progress(self, live: int, stopped: int) -> str:
        return f" | live {live}, stopped {stopped}"
