"""Evaluation on a fixed set of test tasks: mean +- 95% CI (1.96 std / sqrt(n)) for each K."""
from __future__ import annotations

import math

import numpy as np

from pipeline.distributed.ranges import split


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(len(values)))


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def evaluate(backend, params: dict, *, tasks: int, shots: list[int], seed: int, inner_steps: int, mask_mode: str,
             batch_size: int, eval_split: str = "test") -> dict:
    """{K: {mean, ci95, n, before_adaptation, query_loss_per_step, per_task}} on test tasks 0..tasks-1
    (per_task: each task's post-adaptation metric, for combining runs evaluated on the same tasks).

    The same tasks and query sets are used for every K (the sampler draws the task and its query
    before the support points), so the rows of the table differ only in K. Chunks are spread over
    the backend's workers; per-task results do not depend on the chunking."""
    chunks = eval_ranges(tasks, batch_size, backend.eval_spread)
    return {str(k): table_row(backend, params, chunks, shots=k, seed=seed, inner_steps=inner_steps,
                              mask_mode=mask_mode, split=eval_split)[0] for k in shots}


def eval_ranges(tasks: int, batch_size: int, workers: int) -> list[range]:
    """Test tasks 0..tasks-1 in chunks of at most batch_size, at least one per worker."""
    return split(tasks, max(math.ceil(tasks / batch_size), workers))


def table_row(backend, params: dict, chunks: list[range], **kw) -> tuple[dict, np.ndarray]:
    """One row of an evaluation table from the backend's eval chunks (kw as the experiment's
    eval_shard takes them): {mean, ci95, n, before_adaptation, query_loss_per_step, per_task} of the
    per-task metric, and the per-task curves (tasks, steps + 1). Where eval_shard also returns losses
    on data the tasks never trained on (MNIST optimizees), the row has them as "unseen": {mean, ci95,
    n, per_task} after the last step, and its curve {steps, loss_per_step, curve_ci95}."""
    parts = backend.eval_chunks(params, chunks, **kw)
    metric, curve, *unseen = (np.concatenate(p).astype(np.float64) for p in zip(*parts))
    mean, ci = mean_ci95(metric)
    row = {"mean": finite_or_none(mean), "ci95": finite_or_none(ci), "n": int(len(metric)),
           "before_adaptation": finite_or_none(float(curve[:, 0].mean())),
           "query_loss_per_step": [finite_or_none(float(v)) for v in curve.mean(0)],
           "per_task": [finite_or_none(float(v)) for v in metric]}
    if unseen:
        from tasks.optimizees import unseen_steps

        last = unseen[0][:, -1]
        u_mean, u_ci = mean_ci95(last)
        row["unseen"] = {"mean": finite_or_none(u_mean), "ci95": finite_or_none(u_ci), "n": len(last),
                         "per_task": [finite_or_none(float(v)) for v in last],
                         "steps": unseen_steps(kw["steps"]),
                         "loss_per_step": [finite_or_none(float(v)) for v in unseen[0].mean(0)],
                         "curve_ci95": [finite_or_none(float(v)) for v in curve_ci95(unseen[0])]}
    return row, curve


def curve_ci95(curves: np.ndarray) -> np.ndarray:
    """Per-column 95% half-width of the mean of (tasks, points) curves (normal approximation)."""
    return 1.96 * curves.std(0) / np.sqrt(len(curves))


def format_table(results: dict, metric_name: str, header: str = "") -> str:
    from pipeline.core.rules import step_label  # the rule registry imports torch; `metatrain report` reads
    #   this module's statistics without it

    lines = [header] if header else []
    # rows are K for few-shot methods, optimizers (with their step size) for learned optimizers
    named = not all(k.isdigit() for k in results)
    width = max([4, *(len(k) + 15 for k in results)]) if named else 4
    first, before_name = ("optimizer", "initial loss") if named else ("K", "loss before adapt.")
    col = 30 if named else 26
    fmt = (lambda v: f"{v:.4g}") if named else (lambda v: f"{v:.4f}")

    def cell(r: dict) -> str:
        return "diverged" if r["mean"] is None else f"{fmt(r['mean'])} +- {fmt(r['ci95'])}"

    unseen = any("unseen" in r for r in results.values())  # MNIST optimizees: also on images never trained on
    title = f"{metric_name} (95% CI)" if not unseen else "training loss (95% CI)"
    tail = "  unseen-image loss (95% CI)" if unseen else ""
    lines.append(f"{first:>{width}}  {title:<{col}}{before_name:>19}{tail}")
    for k, r in results.items():
        before = "n/a" if r["before_adaptation"] is None else f"{r['before_adaptation']:.4f}"
        label = step_label(k, r["alpha"]) if named else k
        extra = f"  {cell(r['unseen'])}" if "unseen" in r else ""
        lines.append(f"{label:>{width}}  {cell(r):<{col}}{before:>19}{extra}")
    return "\n".join(lines)
