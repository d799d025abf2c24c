"""Plain per-task loop: the usual "loop over tasks, autograd.grad(create_graph=True)" meta-gradient
of the reference libraries, built from the project's own rules and network. It is independent of
torch.func and vmap only, so it checks the batching plumbing (tests/*/test_batched.py; the
benchmarks time it as the baseline), not the rules: those are checked against
tests/independent_reference.py, which shares no code with pipeline/."""
import torch

from pipeline.core.learners import loss_and_metric


def task_slice(batch: dict, i: int) -> dict:
    return {k: task_slice(v, i) if isinstance(v, dict) else v[i] for k, v in batch.items()}


def loop_adapt(learner, inner, params, task, create_graph=True):
    net, rule = learner.net, learner.rule
    state = rule.task_state(params, task["noise"], inner.temperature, inner.mask_mode)
    fast = {k: params[k] for k in rule.fast_keys(params)}
    carry = rule.init_carry(params, fast)
    for _ in range(inner.steps):
        loss = loss_and_metric(net, {**params, **fast}, task["x_support"], task["y_support"])[0]
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph and not rule.first_order)
        if rule.first_order:
            loss = loss.detach()
        fast, carry = rule.update(fast, dict(zip(fast, grads)), loss, params, state, carry, inner.alpha)
    return fast


def loop_meta_gradient(learner, inner, params, batch):
    """(per-task query losses, summed-loss gradient w.r.t. every meta-parameter)."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    losses = []
    for i in range(batch["x_support"].shape[0]):
        task = task_slice(batch, i)
        fast = loop_adapt(learner, inner, params, task)
        losses.append(loss_and_metric(learner.net, {**params, **fast}, task["x_query"], task["y_query"])[0])
    total = torch.stack(losses).sum()
    grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
    return torch.stack(losses).detach(), {k: torch.zeros_like(p) if g is None else g
                                          for (k, p), g in zip(params.items(), grads)}
