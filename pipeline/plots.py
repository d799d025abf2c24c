"""Figures (PNG, matplotlib without pyplot's global state): a run's learning curves, its adaptation
on a few regression test tasks, the fraction of updated weights of masked methods, and a sweep's
loss-against-hyperparameter figure. Each function writes one file and returns its path. The
figures of a run's model import torch where they draw; a sweep's figures do not (`metatrain report`)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline import storage


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return storage.write_file(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"), binary=True)


def learning_curves(entries: list[dict], path: Path, title: str, classification: bool) -> Path:
    """Query loss before adaptation and after each inner step against meta-iteration (and the
    post-adaptation query accuracy for classification)."""
    entries = [e for e in entries if "meta_loss" in e]
    curves = [e for e in entries if "query_loss_per_step" in e]  # a diverged window may have none
    fig = Figure(figsize=(11 if classification else 6.5, 4))
    axes = fig.subplots(1, 2 if classification else 1, squeeze=False)[0]
    its = [e["iteration"] for e in entries]
    steps = len(curves[0]["query_loss_per_step"]) if curves else 0
    for s in range(steps):
        label = "before adaptation" if s == 0 else f"after {s} inner step{'s' if s > 1 else ''}"
        axes[0].plot([e["iteration"] for e in curves], [e["query_loss_per_step"][s] for e in curves], label=label,
                     lw=2 if s == steps - 1 else 1.2, ls="--" if s == 0 else "-")
    axes[0].set(xlabel="meta-iteration", ylabel="query loss (training tasks)", title=title)
    if not classification and entries and all(e["meta_loss"] > 0 for e in entries):
        axes[0].set_yscale("log")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    if classification:
        axes[1].plot(its, [e["metric"] for e in entries], color="C2")
        axes[1].set(xlabel="meta-iteration", ylabel="query accuracy after adaptation", ylim=(0, 1))
        axes[1].grid(alpha=0.3)
    return _save(fig, path)


def updated_fraction(entries: list[dict], final: dict, path: Path, title: str) -> Path:
    """Masked methods: expected fraction of weights updated (mean sigmoid(zeta)) per layer, over
    meta-training and at the end."""
    fig = Figure(figsize=(11, 4))
    ax_t, ax_b = fig.subplots(1, 2)
    cells = [c for c in final if c != "overall"]
    its = [e["iteration"] for e in entries if "updated_fraction" in e]
    for c in [*cells, "overall"]:
        ax_t.plot(its, [e["updated_fraction"][c] for e in entries if "updated_fraction" in e], label=c,
                  lw=2.2 if c == "overall" else 1.2, color="k" if c == "overall" else None)
    ax_t.set(xlabel="meta-iteration", ylabel="fraction of weights updated", ylim=(0, 1), title=title)
    ax_t.legend()
    ax_t.grid(alpha=0.3)
    ax_b.bar(cells + ["overall"], [final[c] for c in cells] + [final["overall"]],
             color=["C0"] * len(cells) + ["k"])
    ax_b.set(ylabel="fraction of weights updated (final)", ylim=(0, 1))
    for i, c in enumerate(cells + ["overall"]):
        ax_b.text(i, final[c] + 0.02, f"{final[c]:.2f}", ha="center")
    return _save(fig, path)


def regression_adaptation(record, path: Path, n_tasks: int = 4) -> Path:
    """A few test tasks: the target function, the K support points, and the model before and
    after adaptation (the evaluation protocol's inner loop and mask mode)."""
    import torch

    from pipeline.core.learners import forward
    from pipeline.core.meta_batch import InnerSettings, inner_adapt

    cfg, exp = record.cfg, record.experiment
    params = {k: v.detach() for k, v in record.params.items()}
    shots = cfg.task.shots
    batch = exp.sample(params, split="test", seed=cfg.eval.seed, iteration=0, indices=range(n_tasks), shots=shots)
    inner = InnerSettings.for_eval(cfg)
    dist = exp.distribution
    grid = np.linspace(*dist.x_range, 200)[:, None]
    xg = torch.as_tensor(grid, dtype=exp.dtype)
    fig = Figure(figsize=(4 * n_tasks, 3.6))
    axes = fig.subplots(1, n_tasks, squeeze=False)[0]
    for b, ax in enumerate(axes):
        task = _index(batch, b)
        fast, _ = inner_adapt(exp.learner, inner, params, task)
        with torch.no_grad():
            before = forward(exp.learner.net, params, xg)
            after = forward(exp.learner.net, {**params, **fast}, xg)
        ax.plot(grid, dist.target(task["coeffs"].numpy()[None], grid[None])[0], color="k", lw=2, label="target")
        ax.plot(grid, before.numpy(), ls="--", color="C1", label="before adaptation")
        ax.plot(grid, after.numpy(), color="C0", label=f"after {inner.steps} step(s)")
        ax.scatter(task["x_support"].numpy(), task["y_support"].numpy(), color="C3", zorder=3,
                   label=f"support (K={shots})")
        ax.set(title=f"test task {b}", xlabel="x")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{cfg.method} on {cfg.task.name}: adaptation on test tasks "
                 f"(alpha={cfg.alpha:g}, mask={cfg.eval.mask})",
                 y=1.03)
    return _save(fig, path)


def meta_lstm_gates(record, path: Path, n_tasks: int = 6, seed: int = 0) -> Path:
    """Meta-Learner LSTM: input gate (learned step size) and forget gate (learned weight decay) over
    the inner steps, for one random coordinate of each layer's weights, across test tasks (the
    paper's gate figure)."""
    import torch

    from pipeline.core.meta_batch import InnerSettings, inner_adapt

    cfg, exp = record.cfg, record.experiment
    params = {k: v.detach() for k, v in record.params.items()}
    rule = exp.learner.rule
    keys = rule.fast_keys(params)
    offsets, start = {}, 0
    for k in keys:
        offsets[k] = (start, params[k].numel())
        start += params[k].numel()
    rng = np.random.default_rng(seed)
    coords = {k.rsplit(".", 1)[0]: offsets[k][0] + int(rng.integers(offsets[k][1])) for k in keys if k.endswith(".W")}
    batch = exp.sample(params, split="test", seed=cfg.eval.seed, iteration=0, indices=range(n_tasks),
                       shots=cfg.task.shots)
    inner = InnerSettings.for_eval(cfg)
    traces = []
    for b in range(n_tasks):
        trace = []
        with torch.no_grad():
            inner_adapt(exp.learner, inner, params, _index(batch, b), trace=trace)
        traces.append(trace)
    fig = Figure(figsize=(3.6 * len(coords), 5.6), layout="constrained")
    axes = fig.subplots(2, len(coords), squeeze=False)
    steps = np.arange(1, inner.steps + 1)
    for col, (layer, idx) in enumerate(coords.items()):
        for row, gate in enumerate(("i", "f")):
            ax = axes[row, col]
            for b, trace in enumerate(traces):
                ax.plot(steps, [float(c[gate][idx]) for c in trace], marker="o", ms=3, color=f"C{b}", lw=1)
            ax.set(title=f"{layer}, coordinate {idx - offsets[layer + '.W'][0]}" if row == 0 else None,
                   xlabel="inner step" if row == 1 else None,
                   ylabel=("input gate i (step size)" if row == 0 else "forget gate f") if col == 0 else None)
            ax.ticklabel_format(axis="y", useOffset=False)
            ax.grid(alpha=0.3)
    fig.suptitle(f"Meta-Learner LSTM gates on {n_tasks} test tasks ({cfg.task.name})")
    return _save(fig, path)


def _index(batch: dict, b: int) -> dict:
    return {k: _index(v, b) if isinstance(v, dict) else v[b] for k, v in batch.items()}


def optimizer_training(entries: list[dict], path: Path, title: str) -> Path:
    """Learned optimizers: the optimizee loss at the start and end of each unroll against
    meta-iteration, and (train.validate_every) the validation scores, the selected one circled."""
    val = [(e["iteration"], e["validation_loss"]) for e in entries
           if e.get("validation_loss") is not None and math.isfinite(e["validation_loss"])]
    entries = [e for e in entries if "meta_loss" in e]
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    its = [e["iteration"] for e in entries]
    ax.plot(its, [e["query_loss_per_step"][-1] for e in entries], label="optimizee loss at the end of an unroll")
    ax.plot(its, [e["query_loss_per_step"][0] for e in entries], ls="--", label="optimizee loss at its start")
    if val:
        ax.plot(*zip(*val), "o-", color="C3", label="validation: final loss of fresh optimizees")
        ax.plot(*min(val, key=lambda v: v[1]), "o", ms=12, mfc="none", color="k", label="selected parameters")
    if entries and all(v > 0 for e in entries for v in e["query_loss_per_step"]):
        ax.set_yscale("log")
    ax.set(xlabel="meta-iteration (one unroll of a batch of training optimizees)", ylabel="optimizee loss", title=title)
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def optimizer_comparison(results: dict, path: Path, *, title: str, y_label: str) -> Path:
    """Learned optimizers: mean optimizee loss (95% CI band) against optimizee step, per optimizer, log y;
    where the optimizees have data they never trained on (MNIST), a second panel of their loss there."""
    from pipeline.core.rules import step_label
    unseen = all("loss_per_step" in r.get("unseen", {}) for r in results.values()) and bool(results)
    fig = Figure(figsize=(12, 4.5) if unseen else (6.5, 4.5), layout="constrained")
    axes = fig.subplots(1, 2 if unseen else 1, squeeze=False)[0]
    n = next(iter(results.values()))["n"] if results else 0
    panels = [("query_loss_per_step", "curve_ci95", None, f"{y_label}: the minibatch trained on")]
    if unseen:
        panels.append(("loss_per_step", "curve_ci95", "steps", f"{y_label}: images never trained on"))
    for ax, (key, ci_key, steps_key, label) in zip(axes, panels):
        positive = True
        for i, (name, r) in enumerate(results.items()):
            row = r if steps_key is None else r["unseen"]
            m = np.array([np.nan if v is None else v for v in row[key]], dtype=float)
            ci = np.array([np.nan if v is None else v for v in row[ci_key]], dtype=float)
            steps = np.arange(len(m)) if steps_key is None else np.asarray(row[steps_key])
            ax.plot(steps, m, color=f"C{i}", lw=2.2 if i == 0 else 1.3, label=step_label(name, r["alpha"]),
                    marker="." if steps_key else None)
            ax.fill_between(steps, m - ci, m + ci, color=f"C{i}", alpha=0.2)
            positive &= bool(np.nanmin(m) > 0) if np.isfinite(m).any() else True
        if positive:
            ax.set_yscale("log")
        ax.set(xlabel="optimizee step", ylabel=label if unseen else y_label)
        ax.legend()
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"{title} ({n} test optimizees, mean and 95% CI)")
    return _save(fig, path)


def sweep_figure(series: dict[str, list[tuple[float, float, float]]], path: Path, *, x_label: str, y_label: str,
                 title: str, log_x: bool) -> Path:
    """One line per series (method): (x, mean, ci95) points with 95% CI error bars; the y axis is
    logarithmic when the values span more than a factor of 20 (as in the step-size study)."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    ys = [m for pts in series.values() for _, m, _ in pts if math.isfinite(m)]
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted(p for p in pts if math.isfinite(p[1]))
        if pts:
            x, m, ci = map(np.asarray, zip(*pts))
            ax.errorbar(x, m, yerr=ci, marker="o", capsize=4, label=name, color=f"C{i}")
    if log_x:
        ax.set_xscale("log")
    if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
        ax.set_yscale("log")
    ax.set(xlabel=x_label, ylabel=y_label, title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


def bar_figure(groups: list[str], series: dict[str, list[tuple[float, float]]], path: Path, *, y_label: str,
               title: str) -> Path:
    """Grouped bars (one group per row of a table, one bar per series) with 95% CI error bars."""
    fig = Figure(figsize=(max(6.5, 1.1 * len(groups) * max(1, len(series)) / 2), 4.5))
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    for i, (name, vals) in enumerate(series.items()):
        x = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
        m = np.array([v[0] for v in vals], dtype=float)
        ci = np.array([v[1] for v in vals], dtype=float)
        ax.bar(x, np.nan_to_num(m), width, yerr=np.nan_to_num(ci), capsize=3, label=name, color=f"C{i}")
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set(ylabel=y_label, title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return _save(fig, path)


def pbt_schedules(schedules: dict[str, dict], keys: list[str], path: Path, *, title: str, metric: str) -> Path:
    """PBT's schedules: one panel per mutated key, one step line per run (its value over meta-iterations,
    a jump at each exploit), coloured by the run's final metric (a colour bar; grey: not evaluated).
    schedules: run name -> {"iterations": [...], key: [...], "final": float | None}."""
    from matplotlib import cm, colormaps, colors

    fig = Figure(figsize=(6.5, 2.6 * len(keys) + 0.6))
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    finals = [s["final"] for s in schedules.values() if s["final"] is not None and math.isfinite(s["final"])]
    norm = colors.Normalize(min(finals), max(finals)) if finals else colors.Normalize(0, 1)
    cmap = colormaps["viridis"]
    for ax, key in zip(axes, keys):
        for s in schedules.values():
            final = s["final"]
            colour = cmap(norm(final)) if final is not None and math.isfinite(final) else "0.7"
            ax.step(s["iterations"], s[key], where="post", color=colour, alpha=0.8, lw=1.2)
        values = [v for s in schedules.values() for v in s[key] if v > 0]
        if values and max(values) / min(values) >= 20:
            ax.set_yscale("log")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3, which="both")
    axes[-1].set_xlabel("meta-iteration")
    axes[0].set_title(title)
    if finals:
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), label=f"final {metric}")
    return _save(fig, path)
