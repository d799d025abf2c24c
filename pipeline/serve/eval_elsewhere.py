"""`metatrain eval RUN_DIR --data ...`: a finished run's config pointed at other test data or
another protocol (ways, query size, classes within one group), with everything that decides how
the run adapts (network, rule, alpha, eval.inner_steps, eval.mask) unchanged.

- The run's own data (the same paths): the run's own split, so with the same seed the tasks are
  exactly those of the in-run evaluation.
- Another data set of the same kind: every class of it is a test class (`task.split: all`).
- Regression runs: `--data` names a task, `sinusoid` or `polynomial[:ORDER]`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config, ConfigError, validate
from tasks import TASKS, names


@dataclass
class Retargeted:
    cfg: Config
    data: str  # what was evaluated on, in words
    protocol: str  # how tasks were drawn, in words
    tag: str  # "" for the run's own data and protocol; else a file-name part


def _regression_task(spec: str) -> tuple[str, int | None]:
    name, _, order = spec.partition(":")
    if name not in names("regression"):
        allowed = ", ".join(n + ("[:ORDER]" if TASKS[n].takes_order else "") for n in names("regression"))
        raise ConfigError(f"--data: a regression run is evaluated on a task, one of {allowed}; got {spec!r}")
    if not TASKS[name].takes_order and order:
        raise ConfigError(f"--data: {name} takes no order, got {spec!r}")
    try:
        return name, int(order) if order else None
    except ValueError:
        raise ConfigError(f"--data: {name} order must be an integer, got {spec!r}") from None


def retarget(run_cfg: Config, *, data: list[str] | None = None, ways: int | None = None, query: int | None = None,
             within_group: bool = False) -> Retargeted:
    cfg = copy.deepcopy(run_cfg)
    t, tag = cfg.task, []
    image = TASKS[t.name].kind == "images"
    if data:
        if image:
            for d in data:
                if not Path(d).expanduser().exists():
                    raise ConfigError(f"--data: {d} does not exist")
            paths = [str(Path(d).expanduser().resolve()) for d in data]
            if paths != list(t.data):
                t.data, t.split, t.split_dir = paths, "all", ""
                tag.append("+".join(Path(p).stem for p in paths)[:80])
        else:
            if len(data) != 1:
                raise ConfigError(f"--data: a regression run is evaluated on one task, got {len(data)}")
            name, order = _regression_task(data[0])
            order = t.order if order is None else order
            if (name, order) != (t.name, t.order):
                t.name, t.order = name, order
                tag.append(name + (str(order) if TASKS[name].takes_order else ""))
    if ways is not None:
        if not image:
            raise ConfigError("--ways: only image classification runs have ways")
        head = cfg.model.ways or t.ways
        if not 2 <= ways <= head:
            raise ConfigError(f"--ways: must be between 2 and the run's {head} (the head's outputs), got {ways}")
        if ways != t.ways:
            cfg.model.ways, t.ways = head, ways
            tag.append(f"{ways}way")
    if query is not None:
        if query < 1:
            raise ConfigError(f"--query: must be >= 1, got {query}")
        if query != t.query:
            t.query = query
            tag.append(f"q{query}")
    if within_group:
        if not image:
            raise ConfigError("--within-group: only image tasks have groups (Omniglot alphabets)")
        if not t.within_group:
            t.within_group = True
            tag.append("within-group")
    validate(cfg, check_paths=False)
    if image:
        where = "the run's own data and split" if t.split != "all" else "every class of it (another data set)"
        data_text = f"{', '.join(t.data)} ({where})"
        group = "one group (alphabet) per task" if t.within_group else "classes from any group"
        protocol = f"{t.ways}-way, {t.query} query image(s) per class, {group}"
    else:
        data_text = t.name + (f" of order {t.order}" if TASKS[t.name].takes_order else "") + \
            (" (the run's own task)" if t.name == run_cfg.task.name and t.order == run_cfg.task.order else "")
        protocol = (f"fresh optimizees, {cfg.eval.inner_steps} optimizer steps each"
                    if TASKS[t.name].kind == "optimizee" else f"{t.query} query point(s) per task")
    return Retargeted(cfg, data_text, protocol, "-".join(tag))
