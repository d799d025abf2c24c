"""Schedulers that decide, a population that applies (as Ray Tune's tune/schedulers/: one file per
scheduler behind a small interface). A `MemberScheduler` says when its next decision is due and,
given the running members' validation losses and current values, returns a `Decision`: which
members stop, which copy another's state, their new values, and what each member's record says.
`Population` (pipeline/driver/population.py) validates, asks, and applies. Schedulers import no
backend, trainer or torch; each is unit-tested alone (tests/unit/test_schedulers.py).

- `MemberScheduler` (base.py): the no-op default, never due.
- `Halving` (halving.py): synchronous successive halving.
- `Pbt` (pbt.py): Population Based Training, Ray Tune's rule made synchronous.

Adding a scheduler (e.g. ASHA-style asynchronous promotion) is one new file here.
"""
from pipeline.driver.schedulers.base import Decision, MemberScheduler
from pipeline.driver.schedulers.halving import Halving
from pipeline.driver.schedulers.pbt import Pbt

__all__ = ["Decision", "Halving", "MemberScheduler", "Pbt"]
