"""Evaluation on a fixed set of test tasks: mean +- 95% CI (1.96 std / sqrt(n)) for each K."""
from __future__ import annotations

import math

import numpy as np
import torch


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(len(values)))


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def evaluate(experiment, params: dict, *, tasks: int, shots: list[int], seed: int, inner_steps: int,
             mask_mode: str, batch_size: int) -> dict:
    """{K: {mean, ci95, n, before_mean, curve}} on test tasks 0..tasks-1 of split "test" with `seed`.

    The same tasks and query sets are used for every K (the sampler draws the task and its query
    before the support points), so the rows of the table differ only in K."""
    results = {}
    for k in shots:
        metric_parts, curve_parts = [], []
        for start in range(0, tasks, batch_size):
            m, c = experiment.eval_shard(params, range(start, min(tasks, start + batch_size)), shots=k,
                                         seed=seed, inner_steps=inner_steps, mask_mode=mask_mode)
            metric_parts.append(m)
            curve_parts.append(c)
        metric = torch.cat(metric_parts).double().cpu().numpy()
        curve = torch.cat(curve_parts).double().cpu().numpy()
        mean, ci = mean_ci95(metric)
        results[str(k)] = {"mean": finite_or_none(mean), "ci95": finite_or_none(ci), "n": int(len(metric)),
                           "before_adaptation": finite_or_none(float(curve[:, 0].mean())),
                           "query_loss_per_step": [finite_or_none(float(v)) for v in curve.mean(0)]}
    return results


def format_table(results: dict, metric_name: str, header: str = "") -> str:
    lines = [header] if header else []
    lines.append(f"{'K':>4}  {metric_name + ' (95% CI)':<26}{'before adaptation':>18}")
    for k, r in results.items():
        cell = "diverged" if r["mean"] is None else f"{r['mean']:.4f} +- {r['ci95']:.4f}"
        before = "n/a" if r["before_adaptation"] is None else f"{r['before_adaptation']:.4f}"
        lines.append(f"{k:>4}  {cell:<26}{before:>18}")
    return "\n".join(lines)
