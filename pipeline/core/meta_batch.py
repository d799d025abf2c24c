"""The single place where tasks are adapted: a shard of tasks, batched over the task dimension.

`shard_meta_gradient` returns the summed post-adaptation query loss of a shard and its gradient
w.r.t. every meta-parameter. Tasks are vectorised with `torch.func.vmap`; the inner step is
`torch.func.grad`, differentiated by the outer autograd pass, so second-order terms flow unless
the rule is first-order. Both the in-process trainer and the Ray workers call these functions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.func import grad_and_value, vmap

from pipeline.core.learners import Learner, loss_and_metric  # noqa: F401 (Learner re-exported)
from pipeline.core.rules import get_rule


@dataclass(frozen=True)
class InnerSettings:
    """The inner loop's settings (a record, not a loop): step size, steps, Gumbel temperature,
    how masks are drawn, which batch-norm statistics normalise the query set ("batch": its
    own; "support": averages over the support passes, Ravi & Larochelle section 3.4), and whether
    to compute the query loss before each inner step (`curve`: one query forward per step,
    up to 62% of an image iteration's work; training computes it on a sample of iterations only)."""

    alpha: float
    steps: int
    temperature: float = 1.0
    mask_mode: str = "sample"
    query_bn: str = "batch"
    curve: bool = True

    @staticmethod
    def for_eval(cfg, steps: int | None = None, mask_mode: str | None = None) -> InnerSettings:
        """The meta-test inner loop of a run's config (eval.inner_steps, eval.mask, eval.query_bn)."""
        return InnerSettings(cfg.alpha, cfg.eval.inner_steps if steps is None else steps, cfg.gumbel_temperature,
                             cfg.eval.mask if mask_mode is None else mask_mode, query_bn(cfg))


def query_bn(cfg) -> str:
    """eval.query_bn resolved: "" means the method's own choice (UpdateRule.query_bn: "support" for
    Meta-LSTM, its paper's section 3.4; "batch" for the others, as reference MAML)."""
    return cfg.eval.query_bn or get_rule(cfg.method).query_bn


def inner_adapt(learner: Learner, inner: InnerSettings, params: dict, task: dict,
                trace: list | None = None, functional: bool = True) -> tuple[dict, list]:
    """Adapted fast weights of one task, and its query loss before each inner step (no grad; none
    when the task has no query labels, as when adapting to a user's own task).
    `trace`, if given, receives the rule's carry after every step (e.g. Meta-LSTM gate values).

    With inner.query_bn == "support" (meta-test time only) the returned dict also holds, per
    batch-norm cell, the mean of the support passes' batch statistics ("<cell>.bn_mean",
    "<cell>.bn_var", a cumulative average as PyTorch's momentum=None), which every later forward
    with these weights uses instead of its own batch: the query set is then normalised without
    its own statistics. The query curve at step t uses the averages of support passes 0..t.

    functional=False (one task at a time, outside vmap) takes the inner gradient with
    torch.autograd.grad instead of torch.func.grad: the same numbers, ~5% faster on conv tasks."""
    net, rule = learner.net, learner.rule
    state = rule.task_state(params, task.get("noise", {}), inner.temperature, inner.mask_mode)
    fast = {k: params[k] for k in rule.fast_keys(params)}
    carry = rule.init_carry(params, fast)
    collect = inner.query_bn == "support" and any(c.batch_norm for c in net.cells)
    averages: dict = {}

    def support_loss(fast):
        stats = {} if collect else None
        loss = loss_and_metric(net, {**params, **fast}, task["x_support"], task["y_support"], stats)[0]
        return loss, (stats or {})

    if functional:
        grad_fn = grad_and_value(support_loss, has_aux=True)
    else:  # second order only where an outer gradient will flow back through it
        create_graph = (not rule.first_order and torch.is_grad_enabled()
                        and any(v.requires_grad for v in params.values()))
        grad_fn = lambda fast: _autograd_grad_and_value(support_loss, fast, create_graph)  # noqa: E731
    curve = []
    for step in range(inner.steps):
        g, (loss, stats) = grad_fn(fast)
        for k, v in stats.items():  # cumulative average over the support passes so far
            averages[k] = v if step == 0 else averages[k] + (v - averages[k]) / (step + 1)
        if inner.curve and "y_query" in task:
            with torch.no_grad():
                curve.append(loss_and_metric(net, {**params, **fast, **averages}, task["x_query"], task["y_query"])[0])
        if rule.first_order:  # the inner gradient (and loss) are constants for the outer gradient
            g, loss = {k: v.detach() for k, v in g.items()}, loss.detach()
        fast, carry = rule.update(fast, g, loss, params, state, carry, inner.alpha)
        if trace is not None:
            trace.append(carry)
    return {**fast, **averages}, curve


def _autograd_grad_and_value(loss_fn, fast: dict, create_graph: bool):
    """grad_and_value(loss_fn, has_aux=True)(fast) by torch.autograd (the reference libraries' inner
    step); inputs that need no gradient (evaluation) are differentiated as fresh leaves."""
    with torch.enable_grad():
        inputs = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in fast.items()}
        loss, aux = loss_fn(inputs)
        grads = torch.autograd.grad(loss, list(inputs.values()), create_graph=create_graph, allow_unused=True)
    return zeros_where_unused(inputs, grads), (loss, aux)


def zeros_where_unused(tensors: dict, grads) -> dict:
    """autograd.grad(..., allow_unused=True)'s gradients by name, zeros where a tensor was unused."""
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(tensors.items(), grads)}


def adapt(learner: Learner, inner: InnerSettings, params: dict, task: dict, functional: bool = True):
    """Adapt one task on its support set; return (query loss after adaptation, aux).

    aux = (query loss before each inner step and after the last, shape (steps + 1,), or only after
           the last (1,) when not inner.curve; query metric after adaptation)."""
    fast, curve = inner_adapt(learner, inner, params, task, functional=functional)
    loss, metric = loss_and_metric(learner.net, {**params, **fast}, task["x_query"], task["y_query"])
    return loss, (torch.stack([*curve, loss.detach()]), metric.detach())


def to_numpy(tensors: dict) -> dict:
    """Tensors as numpy arrays on the CPU: what Ray serialises several times faster than tensors."""
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}


Sum = float | torch.Tensor  # a run's sums are floats; a population's are (P,) tensors, one per member


@dataclass
class ShardResult:
    """Sums over a shard's tasks; shards merge by adding (in a fixed order)."""

    grads: dict[str, torch.Tensor]  # name -> summed gradient of the query loss
    loss_sum: Sum
    n_tasks: int
    curve_sum: torch.Tensor | None  # summed query loss before each inner step and after the last (None: not computed)
    metric_sum: Sum
    # per-task state handed to the next iteration, concatenated in task order (a learned optimizer's
    # optimizees: theta and the optimizer's state); None where nothing carries over
    carry: dict[str, torch.Tensor] | None = None

    @staticmethod
    def merge(results: list[ShardResult]) -> ShardResult:
        """Sums added in shard order; a per-task carry concatenated in task order."""
        first, rest = results[0], results[1:]
        grads = {k: v.clone() for k, v in first.grads.items()}
        for r in rest:
            for k in grads:
                grads[k] += r.grads[k]
        carry = None if first.carry is None else {k: torch.cat([r.carry[k] for r in results]) for k in first.carry}
        return ShardResult(grads, first.loss_sum + sum(r.loss_sum for r in rest),
                           first.n_tasks + sum(r.n_tasks for r in rest),
                           None if first.curve_sum is None else first.curve_sum + sum(r.curve_sum for r in rest)
                           if rest else first.curve_sum.clone(),
                           first.metric_sum + sum(r.metric_sum for r in rest), carry)

    def to_wire(self) -> ShardResult:
        """The same result with numpy arrays for tensors (on the CPU): Ray serialises arrays several
        times faster than torch tensors."""
        def arrays(d):
            return None if d is None else to_numpy(d)

        def plain(x):
            return x.detach().cpu().numpy() if torch.is_tensor(x) else x

        return ShardResult(arrays(self.grads), plain(self.loss_sum), self.n_tasks, plain(self.curve_sum),
                           plain(self.metric_sum), arrays(self.carry))

    @staticmethod
    def from_wire(r: ShardResult) -> ShardResult:
        """A result from the wire with tensors again (copies: arrays from Ray's object store are read-only)."""
        def tensors(d):
            return None if d is None else {k: torch.tensor(v) for k, v in d.items()}

        def sum_(x):
            return torch.tensor(x) if isinstance(x, np.ndarray) else x  # a population's: one per member

        return ShardResult(tensors(r.grads), sum_(r.loss_sum), r.n_tasks,
                           None if r.curve_sum is None else torch.tensor(r.curve_sum), sum_(r.metric_sum),
                           tensors(r.carry))


def shard_meta_gradient(learner: Learner, inner: InnerSettings, params: dict, batch: dict,
                        chunk_size: int | None = None) -> ShardResult:
    """Summed query loss of a batch of tasks after adaptation, and its meta-gradient.

    Tasks are vmapped and the inner step is torch.func.grad; the outer gradient is plain autograd
    through that (the same numbers as an outer torch.func.grad, 1.4-2x faster on small models
    because every op then carries one functorch level fewer). chunk_size bounds the tasks per
    vectorised call: conv nets on CPU run faster in chunks that keep activations in cache."""
    return shard_result(*autograd_gradient(lambda leaves, b: shard_sums(learner, inner, leaves, b, chunk_size),
                                             params, batch), batch)


def shard_sums(learner: Learner, inner: InnerSettings, leaves: dict, batch: dict, chunk_size: int | None,
                functional: bool = False):
    """The forward of a shard: summed query loss, loss curve and metric of its vmapped tasks."""
    losses, (curves, metrics) = _adapt_tasks(learner, inner, leaves, batch, chunk_size, functional)
    return losses.sum(), curves.sum(0) if inner.curve else None, metrics.sum()


def map_tree(fn, tree: dict) -> dict:
    return {k: map_tree(fn, v) if isinstance(v, dict) else fn(v) for k, v in tree.items()}


def _adapt_tasks(learner: Learner, inner: InnerSettings, params: dict, batch: dict, chunk_size: int | None,
                 functional: bool = False):
    """`adapt` over a batch's tasks, stacked: vmapped in chunks of chunk_size tasks (None: all at
    once), or with chunk_size 1 a plain loop over tasks - no batching rules at all, its inner
    gradient by torch.autograd unless `functional` (inside a vmap over a population's members, or
    under torch.compile, which cannot differentiate an autograd.grad twice)."""
    if chunk_size != 1:
        return vmap(adapt, in_dims=(None, None, None, 0), chunk_size=chunk_size)(learner, inner, params, batch)
    outs = [adapt(learner, inner, params, map_tree(lambda x: x[i], batch), functional=functional)
            for i in range(len(batch["x_support"]))]
    return torch.stack([o[0] for o in outs]), (torch.stack([o[1][0] for o in outs]),
                                               torch.stack([o[1][1] for o in outs]))


def autograd_gradient(forward, params: dict, batch: dict) -> tuple:
    """(grads, loss, curve, metric) of a shard forward, its (summed) loss differentiated by autograd."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss, curve, metric = forward(leaves, batch)
    grads = torch.autograd.grad(loss.sum(), list(leaves.values()), allow_unused=True)
    return zeros_where_unused(leaves, grads), loss.detach(), None if curve is None else curve.detach(), metric.detach()


def shard_result(grads: dict, loss, curve, metric, batch: dict) -> ShardResult:
    return ShardResult(grads, loss.item(), batch["x_support"].shape[0], curve, metric.item())


def shard_evaluate(learner: Learner, inner: InnerSettings, params: dict, batch: dict,
                   chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task query metric after adaptation (B,) and per-task query-loss curve (B, steps + 1)."""
    params = {k: v.detach() for k, v in params.items()}
    _, (curves, metrics) = _adapt_tasks(learner, inner, params, batch, chunk_size)
    return metrics, curves
