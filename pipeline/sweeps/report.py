"""`metatrain report SWEEP_DIR`: the study table a paper prints, from a sweep's trial runs.

Rows are the swept keys other than method and seed (or `report.rows`), columns are the methods
(or, when only the method is swept, the evaluation K). A cell combines the trials (seeds) of its
row and column. Trials evaluated on the same test tasks (the same eval.seed: the default) are
combined task by task: each task's post-adaptation loss is averaged over the trials, then mean +-
1.96 std / sqrt(n) over the n tasks, the thesis protocol; with one seed that is the thesis number
itself. Trials evaluated on different tasks are pooled as independent samples (n = tasks x trials,
from each trial's mean, ci95 and n).

Writes report.md, report.parquet (one row per table cell), trials.parquet (one row per trial)
and report.png (loss against the row key per method, 95% CI bars; bars for categorical rows).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from pipeline import storage
from pipeline.config import ConfigError
from pipeline.driver.evaluation import mean_ci95
from pipeline.driver.run_dir import CONFIG, RESULTS
from pipeline.sweeps.record import FINISHED, MANIFEST, SPEC, TRIALS, read_manifest
from pipeline.sweeps.spec import SchedulerSpec
from pipeline.yaml_dataclasses import flatten


@dataclass
class Trial:
    trial_id: str
    name: str
    status: str
    values: dict  # swept key -> value
    config: dict  # the run's flattened config
    results: dict | None  # results.json of a finished run
    error: str = ""
    stopped_at: int | None = None  # the iteration a scheduler stopped the run at
    lineage: list = field(default_factory=list)  # PBT's exploits of this run (pipeline/driver/schedulers/pbt.py)


@dataclass
class Report:
    text: str
    files: list[Path] = field(default_factory=list)


def load_trials(sweep_dir: Path) -> tuple[dict, list[Trial]]:
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / SPEC).is_file():
        raise ConfigError(f"SWEEP_DIR: {sweep_dir} is not a sweep directory (no {SPEC})")
    sweep = yaml.safe_load((sweep_dir / SPEC).read_text())
    manifest = read_manifest(sweep_dir)
    if not manifest:
        raise ConfigError(f"SWEEP_DIR: {sweep_dir} has no trials yet (no {MANIFEST})")
    trials = []
    for trial_id, t in sorted(manifest.items()):
        run_dir = sweep_dir / TRIALS / t["name"]
        config = flatten(yaml.safe_load((run_dir / CONFIG).read_text())) if (run_dir / CONFIG).is_file() else {}
        results = None
        if t.get("status") in FINISHED and (run_dir / RESULTS).is_file():
            results = json.loads((run_dir / RESULTS).read_text())
            if results.get("family") == "optimizer":
                # a learned optimizer's (or baseline's) cell is its own final loss; its "K" column
                # is the evaluation horizon (optimizee steps). With train.meta_loss: heldout, the loss
                # on the data each optimizee never trained on: the measure the run is selected by
                own, metric = results["results"][results["method"]], results["metric"]
                if config.get("train.meta_loss") == "heldout" and "unseen" in own:
                    own, metric = own["unseen"], f"{metric} on held-out data"
                results = {**results, "metric": metric, "results": {str(results["eval"]["inner_steps"]): own}}
        lineage = t.get("lineage") or ((results or {}).get("pbt") or {}).get("lineage") or []
        trials.append(Trial(trial_id, t["name"], t.get("status", "unfinished"), t.get("config", {}), config, results,
                            t.get("error", ""), t.get("stopped_at"), lineage))
    return sweep, trials


def _best(trials: list[Trial], shots: list, metric: str) -> str:
    """The best finished run at the first tabulated K (accuracy: highest; a loss: lowest), by its run directory."""
    k = str(shots[0]) if shots else None
    done = [t for t in trials
            if t.results and k in t.results["results"] and t.results["results"][k]["mean"] is not None]
    if not done:
        return ""
    pick = max if "accuracy" in metric else min
    t = pick(done, key=lambda t: t.results["results"][k]["mean"])
    r = t.results["results"][k]
    return f"Best run at K = {k}: trials/{t.name} ({metric} {r['mean']:.4f} ± {r['ci95']:.4f})."


def pool(parts: list[tuple[float, float, int]]) -> tuple[float, float, int]:
    """Pooled (mean, ci95, n) of groups given as (mean, ci95, n), ci95 = 1.96 std / sqrt(n) with
    the population std of each group (as `evaluation.mean_ci95` computes it)."""
    n = sum(p[2] for p in parts)
    mean = sum(m * k for m, _, k in parts) / n
    second = sum(k * ((ci * math.sqrt(k) / 1.96) ** 2 + m * m) for m, ci, k in parts) / n
    return mean, 1.96 * math.sqrt(max(second - mean * mean, 0.0) / n), n


@dataclass
class Cell:
    mean: float | None = None
    ci95: float | None = None
    n: int = 0
    trials: int = 0  # finished trials pooled
    diverged: int = 0  # of those, how many diverged during meta-training
    excluded: int = 0  # trials of this cell that errored, were stopped or did not finish
    nonfinite: bool = False
    fraction: float | None = None  # mean fraction of weights updated (masked methods)
    fraction_cells: dict = field(default_factory=dict)

    def text(self) -> str:
        if self.nonfinite:
            s = "diverged"
        elif self.mean is None:
            return "—" if not self.excluded else f"— ({self.excluded} not finished)"
        else:
            digits = 1 if abs(self.mean) >= 100 else 2 if abs(self.mean) >= 10 else 3
            s = f"{self.mean:.{digits}f} ± {self.ci95:.{digits}f}"
        if self.diverged:
            s += " †"
        if self.excluded:
            s += f" ({self.trials} of {self.trials + self.excluded} trials)"
        return s


def combine(evals: list[dict], eval_seeds: list) -> tuple[float, float, int]:
    """(mean, ci95, n) of one K's evaluations (results.json entries) of several trials."""
    per_task = [e.get("per_task") for e in evals]
    if len(set(eval_seeds)) == 1 and all(p is not None for p in per_task) and len({len(p) for p in per_task}) == 1:
        # the same test tasks: average each task over the trials, then the CI over the tasks
        mean, ci = mean_ci95(np.mean(np.array(per_task, dtype=np.float64), axis=0))
        return mean, ci, len(per_task[0])
    return pool([(e["mean"], e["ci95"], e["n"]) for e in evals])


def _cell(trials: list[Trial], k: str) -> Cell:
    cell = Cell(excluded=sum(t.results is None for t in trials))
    done = [t for t in trials if t.results is not None and k in t.results["results"]]
    cell.trials, cell.diverged = len(done), sum(t.status == "diverged" for t in done)
    evals = [t.results["results"][k] for t in done]
    cell.nonfinite = any(e["mean"] is None or e["ci95"] is None for e in evals)
    if evals and not cell.nonfinite:
        cell.mean, cell.ci95, cell.n = combine(evals, [t.config.get("eval.seed") for t in done])
    fractions = [t.results["updated_fraction"] for t in done if t.results.get("updated_fraction")]
    if fractions:
        cell.fraction = sum(f["overall"] for f in fractions) / len(fractions)
        cell.fraction_cells = {c: sum(f[c] for f in fractions) / len(fractions) for c in fractions[0]}
    return cell


def _ordered(values: list, space_entry: dict | None) -> list:
    if space_entry and ("grid" in space_entry or "choice" in space_entry):
        listed = next(iter(space_entry.values()))
        return [v for v in listed if v in values] + sorted((v for v in values if v not in listed), key=str)
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _fmt(v) -> str:
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(map(_fmt, v)) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _value(t: Trial, k: str):
    """A trial's value of key k, hashable: a swept list (eval.shots, model.hidden) becomes a tuple."""
    v = t.values[k] if k in t.values else t.config.get(k)
    return tuple(v) if isinstance(v, list) else v


def _layout(space: dict, rep: dict, trials: list[Trial]) -> tuple[list, str | None, list, list, list]:
    """(row keys, column key, rows, columns, each trial's row): report.rows or every swept key but
    method and seed as rows, method as columns; rows and columns in the listed (grid) order."""
    swept = list(space)
    row_keys = list(rep.get("rows") or [k for k in swept if k not in ("method", "seed")])
    col_key = "method" if "method" in swept and "method" not in row_keys else None
    if not row_keys and col_key:
        row_keys, col_key = ["method"], None
    row_vals = [tuple(_value(t, k) for k in row_keys) for t in trials]
    rows = []
    for combo in row_vals:
        if combo not in rows:
            rows.append(combo)
    # order rows by the first key's listed (grid) order, then the next key's, ...
    for i in reversed(range(len(row_keys))):
        order = _ordered(list({r[i] for r in rows}), space.get(row_keys[i]))
        rows.sort(key=lambda r: order.index(r[i]))
    cols = _ordered(list({_value(t, col_key) for t in trials}), space.get(col_key)) if col_key else [None]
    return row_keys, col_key, rows, cols, row_vals


def _setting(base: dict, optimizer: bool) -> str:
    """One sentence: how the base config trains and evaluates."""
    n_tasks = base["eval"]["tasks"]
    if optimizer:
        split = base["eval"].get("split", "test")
        return (f"Optimizees {base['task']['name']}, trajectories of {base['inner_steps']} steps unrolled "
                f"{base['train'].get('unroll') or base['inner_steps']} at a time (α = {_fmt(base['alpha'])}, "
                f"β = {_fmt(base['beta'])}, meta-batch {base['meta_batch_size']}, {base['iterations']} iterations, "
                f"unless swept); evaluated on {n_tasks} fresh optimizees of the {split} split, "
                f"{base['eval']['inner_steps']} steps each.")
    return (f"Task {base['task']['name']}, trained with K = {base['task']['shots']}, "
            f"{base['inner_steps']} inner step(s) (α = {_fmt(base['alpha'])}, β = {_fmt(base['beta'])}, "
            f"meta-batch {base['meta_batch_size']}, "
            f"{base['iterations']} iterations, unless swept); evaluated on {n_tasks} test tasks with "
            f"{base['eval']['inner_steps']} inner step(s), mask mode {base['eval']['mask']}.")


def _cell_tables(rows, cols, row_keys, col_key, cells, shots, metric: str, optimizer: bool, pooled: str) -> list[str]:
    """The Markdown tables of the cells: one per K with methods as columns, else one with K as columns."""
    md = []
    tables = [(k, [k]) for k in shots] if col_key else [(None, shots)]
    for k_title, ks in tables:
        if col_key:
            title = (f"{metric} after {k_title} optimizee steps" if optimizer
                     else f"Post-adaptation {metric}, K = {k_title}")
            md += [f"## {title}", "", pooled, ""]
            header = [*row_keys, *[_fmt(c) for c in cols]]
            body = [[*map(_fmt, row), *[cells[(row, c, k_title)].text() for c in cols]] for row in rows]
        else:
            md += [f"## {metric.capitalize() if optimizer else 'Post-adaptation ' + metric}", "", pooled, ""]
            header = [*row_keys, *[f"{k} steps" if optimizer else f"K = {k}" for k in ks]]
            body = [[*map(_fmt, row), *[cells[(row, None, k)].text() for k in ks]] for row in rows]
        md += [_md_table(header, body), ""]
    return md


def build_report(sweep_dir: Path, shots: list[int] | None = None):
    """(markdown, cell rows, trial rows, figure spec) for the sweep in `sweep_dir`."""
    sweep, trials = load_trials(sweep_dir)
    space = sweep["space"]
    swept = list(space)
    rep = sweep.get("report") or {}
    row_keys, col_key, rows, cols, row_vals = _layout(space, rep, trials)
    evaluated = sorted({int(k) for t in trials if t.results for k in t.results["results"]})
    shots = [str(k) for k in (shots or rep.get("shots") or evaluated)] if evaluated else []
    metric = next((t.results["metric"] for t in trials if t.results), "query loss")
    optimizer = any(t.results and t.results.get("family") == "optimizer" for t in trials)

    def members(row, col):
        return [t for t, rv in zip(trials, row_vals) if rv == row and (col_key is None or _value(t, col_key) == col)]

    cells = {(row, col, k): _cell(members(row, col), k) for row in rows for col in cols for k in shots}
    base = sweep["base_config"]
    seeds = {_value(t, "seed") for t in trials if t.results}
    n_tasks = base["eval"]["tasks"]
    counts = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    md = [f"# Sweep `{sweep['name']}`", "",
          f"{_setting(base, optimizer)} Swept: {', '.join(f'{k} ∈ {_space_text(space[k])}' for k in swept)}.",
          "", f"Trials: {len(trials)} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}).", ""]
    pooled = (f"mean ± 95% CI over {n_tasks} {'optimizees' if optimizer else 'test tasks'}"
              + (f", each task's loss averaged over {len(seeds)} seeds (trained models)" if len(seeds) > 1 else ""))
    md += _cell_tables(rows, cols, row_keys, col_key, cells, shots, metric, optimizer, pooled)
    if any(c.diverged for c in cells.values()):
        md += ["† includes trials that diverged in meta-training (non-finite meta-gradients for "
               "`train.max_bad_steps` steps in a row), evaluated at their last finite parameters.", ""]
    cell_rows = [{**{key: list(v) if isinstance(v, tuple) else v for key, v in zip(row_keys, row)},
                  **({col_key: col} if col_key else {}),
                  "K": int(k), "mean": c.mean, "ci95": c.ci95, "n": c.n, "trials": c.trials,
                  "diverged": c.diverged, "excluded": c.excluded, "nonfinite": c.nonfinite,
                  "updated_fraction": c.fraction} for (row, col, k), c in cells.items()]
    fraction_md = _fraction_table(rows, cols, row_keys, col_key, cells, shots)
    if fraction_md:
        md += ["## Fraction of weights updated (mean of sigmoid(ζ), averaged over seeds)", "", fraction_md, ""]
    bad = [t for t in trials if t.status not in FINISHED]
    if bad:
        def why(t):
            at = f" at iteration {t.stopped_at}" if t.stopped_at is not None else ""
            return f"{t.name} ({t.status}{at}{': ' + t.error if t.error else ''})"

        md += ["Not in the table: " + "; ".join(why(t) for t in bad), ""]
    scheduler = sweep.get("scheduler") or {}
    if scheduler.get("name") == "pbt":
        md += _pbt_section(scheduler, base, trials, shots, metric)
    best = _best(trials, shots, metric)
    if best:
        md += [best, ""]
    trial_rows = [_trial_row(t, swept) for t in trials]
    figure = dict(rows=rows, cols=cols, row_keys=row_keys, col_key=col_key, cells=cells, shots=shots,
                  metric=metric, train_k=str(base["task"]["shots"]), name=sweep["name"], optimizer=optimizer,
                  pbt=list(scheduler.get("hyperparam_mutations") or {}) if scheduler.get("name") == "pbt" else [],
                  trials=trials)
    return "\n".join(md), cell_rows, trial_rows, figure


def _final(t: Trial, shots: list) -> float | None:
    r = ((t.results or {}).get("results") or {}).get(shots[0]) if shots else None
    return r["mean"] if r else None


def _pbt_section(scheduler: dict, base: dict, trials: list[Trial], shots: list, metric: str) -> list[str]:
    """Each run's start and final values of the mutated keys, its exploits, its final metric, and
    its lineage: the iterations at which it copied another run, and the values it explored."""
    keys = list(scheduler.get("hyperparam_mutations") or {})
    interval = SchedulerSpec(**scheduler).interval_from(base["iterations"])
    md = ["## Population Based Training", "",
          f"Every {interval} meta-iterations the runs of each population were ranked by val_loss "
          f"({base['eval'].get('val_tasks', 200)} validation tasks); the bottom {scheduler['quantile_fraction']:g} "
          f"copied a random run of the top {scheduler['quantile_fraction']:g} (parameters and Adam state) and "
          f"explored {', '.join(keys)} (resample probability {scheduler['resample_probability']:g}, factors "
          f"{', '.join(f'{f:g}' for f in scheduler['perturbation_factors'])}). Start and final values, "
          f"{metric} at K = {shots[0] if shots else '-'}:", ""]
    body = []
    for t in trials:
        final = (t.results or {}).get("pbt", {}).get("final") or (t.lineage[-1]["new"] if t.lineage else {})
        start = [t.config.get(k) for k in keys]
        end = [final.get(k, v) for k, v in zip(keys, start)]
        value = _final(t, shots)
        body.append([t.name, *(f"{_fmt(a)} → {_fmt(b)}" if a != b else _fmt(a) for a, b in zip(start, end)),
                     str(len(t.lineage)), "—" if value is None else f"{value:.4f}"])
    md += [_md_table(["run", *keys, "exploits", f"K = {shots[0]}" if shots else "final"], body), ""]
    lines = [f"- {t.name}: " + "; ".join(
        f"it {e['iteration']} ← {e['donor']} (" + ", ".join(f"{k} {_fmt(e['new'][k])} ({e['ops'][k]})"
                                                          for k in e["ops"]) + ")" for e in t.lineage)
        for t in trials if t.lineage]
    if lines:
        md += ["Lineage (iteration, donor, explored values):", "", *lines, ""]
    return md


def _pbt_figure(fig: dict, out_dir: Path) -> list[Path]:
    """plots/pbt_schedules.png from each run's metrics.jsonl (its values at every decision)."""
    from pipeline.driver.run_dir import read_metrics
    from pipeline.plots import pbt_schedules

    keys, schedules = fig["pbt"], {}
    for t in fig["trials"]:
        decisions = [e for e in read_metrics(out_dir / TRIALS / t.name) if "val_loss" in e and keys[0] in e]
        start = {k: t.config.get(k) for k in keys}
        if any(v is None for v in start.values()):
            continue
        end = (t.results or {}).get("iterations") or (decisions[-1]["iteration"] if decisions else 0)
        its = [0, *(e["iteration"] for e in decisions), end]
        schedules[t.name] = {"iterations": its, "final": _final(t, fig["shots"]),
                             **{k: [start[k], *(e[k] for e in decisions), (decisions[-1] if decisions else start)[k]]
                                for k in keys}}
    if not schedules:
        return []
    return [pbt_schedules(schedules, keys, out_dir / "plots" / "pbt_schedules.png", metric=fig["metric"],
                          title=f"{fig['name']}: PBT schedules ({len(schedules)} runs)")]


def _space_text(entry: dict) -> str:
    kind, values = next(iter(entry.items()))
    if kind in ("grid", "choice"):
        return "{" + ", ".join(map(_fmt, values)) + "}"
    return f"{kind}[{_fmt(values[0])}, {_fmt(values[1])}]"


def _fraction_table(rows, cols, row_keys, col_key, cells, shots) -> str:
    if not shots:
        return ""
    k = shots[0]
    if col_key:
        masked = [c for c in cols if any(cells[(r, c, k)].fraction is not None for r in rows)]
        if not masked:
            return ""
        body = [[*map(_fmt, r), *[_frac(cells[(r, c, k)].fraction) for c in masked]] for r in rows]
        return _md_table([*row_keys, *map(_fmt, masked)], body)
    layers = next((list(cells[(r, None, k)].fraction_cells) for r in rows if cells[(r, None, k)].fraction_cells), [])
    if not layers:
        return ""
    body = [[*map(_fmt, r), *[_frac(cells[(r, None, k)].fraction_cells.get(l)) for l in layers]] for r in rows]
    return _md_table([*row_keys, *layers], body)


def _frac(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def _trial_row(t: Trial, swept: list[str]) -> dict:
    row = {"trial_id": t.trial_id, "name": t.name, "status": t.status, "error": t.error,
           **{k: t.values.get(k, t.config.get(k)) for k in swept}}
    r = t.results or {}
    row["iterations"], row["skipped_steps"] = r.get("iterations"), r.get("skipped_steps")
    for k, v in (r.get("results") or {}).items():
        row[f"eval_K{k}_mean"], row[f"eval_K{k}_ci95"], row[f"eval_K{k}_n"] = v["mean"], v["ci95"], v["n"]
    for c, v in (r.get("updated_fraction") or {}).items():
        row["updated_fraction" if c == "overall" else f"updated_fraction_{c}"] = v
    return row


def _figure(fig: dict, out_dir: Path) -> list[Path]:
    from pipeline.plots import bar_figure, sweep_figure

    rows, cols, row_keys, col_key, cells, shots = (fig[k] for k in ("rows", "cols", "row_keys", "col_key", "cells",
                                                                     "shots"))
    if not shots:
        return []
    k = fig["train_k"] if fig["train_k"] in shots else shots[0]
    y_label = (f"{fig['metric']} after {k} steps" if fig.get("optimizer")
               else f"post-adaptation {fig['metric']} (K = {k})")
    numeric = len(row_keys) == 1 and all(isinstance(r[0], (int, float)) and not isinstance(r[0], bool) for r in rows)
    paths = []
    if numeric and len(rows) > 1:
        key = row_keys[0]
        xs = [r[0] for r in rows]
        log_x = key in ("alpha", "beta", "gumbel_temperature") or (min(xs) > 0 and max(xs) / min(xs) >= 100)
        series = {_fmt(c) if c is not None else fig["name"]:
                  [(r[0], cells[(r, c, k)].mean, cells[(r, c, k)].ci95) for r in rows
                   if cells[(r, c, k)].mean is not None] for c in cols}
        paths.append(sweep_figure(series, out_dir / "report.png", x_label=key, y_label=y_label,
                                  title=f"{fig['name']}: {y_label} against {key} (95% CI)", log_x=log_x))
    else:
        groups = [", ".join(map(_fmt, r)) for r in rows]
        if col_key:
            series = {_fmt(c): [(cells[(r, c, k)].mean, cells[(r, c, k)].ci95) for r in rows] for c in cols}
        else:
            series = {f"K = {kk}": [(cells[(r, None, kk)].mean, cells[(r, None, kk)].ci95) for r in rows]
                      for kk in shots}
            y_label = f"post-adaptation {fig['metric']}"
        paths.append(bar_figure(groups, series, out_dir / "report.png", y_label=y_label,
                                title=f"{fig['name']} (95% CI)"))
    return paths


def write_report(sweep_dir: Path, shots: list[int] | None = None) -> Report:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sweep_dir = Path(sweep_dir)
    text, cell_rows, trial_rows, fig = build_report(sweep_dir, shots)
    files = [sweep_dir / "report.md", sweep_dir / "report.parquet", sweep_dir / "trials.parquet"]
    storage.write_text(files[0], text + "\n")
    for path, rows in ((files[1], cell_rows), (files[2], trial_rows)):
        storage.write_file(path, lambda f, rows=rows: pq.write_table(pa.Table.from_pylist(rows), f), binary=True)
    files += _figure(fig, sweep_dir)
    if fig["pbt"]:
        files += _pbt_figure(fig, sweep_dir)
    return Report(text, files)
