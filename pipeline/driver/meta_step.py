"""The one outer step of every run, solo or a population's member: the non-finite guard, the
meta-gradient norm clip and Adam, for P stacked runs at once (a solo run is P = 1). Its state is
written to checkpoints in torch.optim.Adam's format, so a member's checkpoint is a solo checkpoint."""
from __future__ import annotations

import copy
import math

import torch

from pipeline.shards.compiled import CompiledWithFallback, mark_dynamic_rows

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults
# The rest of torch.optim.Adam's param group, as its state_dict() writes it (key order included;
# tests/unit/test_checkpoints.py compares): spelled out, because building a torch.optim.Adam to read
# it imports torch._dynamo (1.7 s of every run's first checkpoint).
ADAM_GROUP = {"weight_decay": 0, "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
              "differentiable": False, "fused": None, "decoupled_weight_decay": False}


class StackedAdam:
    """torch.optim.Adam's single-tensor update (the same elementwise ops in the same order) for P
    members at once, each with its own step size beta and step count. Parameters and moments live
    in one flat (P, N) buffer each, so an update is a dozen ops whatever the number of parameter
    tensors (per-tensor updates were ~20% of a packed sine iteration); `params` are per-key
    (P, ...) views into it. With compile=True (train.compile) the update and the finiteness check
    before it are one fused torch.compile kernel instead of ~20 passes over the buffers, which
    are as large as the population's parameters."""

    def __init__(self, params: dict, beta: torch.Tensor, grad_clip: float = 0.0, compile: bool = False, log=print,
                 dynamic_members: bool = False):
        """dynamic_members: the compiled update keeps the member count symbolic (a population that
        narrows: one graph for every count; a single row runs eagerly)."""
        self.shapes = {k: v.shape[1:] for k, v in params.items()}
        self.beta, self.grad_clip = beta, grad_clip
        self.flat = self.flatten(params).clone()
        self.params = self.views(self.flat)
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        self.steps = torch.zeros(len(self.flat), dtype=torch.long, device=self.flat.device)
        self._update = CompiledAdamUpdate(log, compile, dynamic_members)

    @classmethod
    def of_run(cls, params: dict, beta: float, grad_clip: float, log=print) -> StackedAdam | None:
        """One run's outer step (P = 1, eager: bitwise torch.optim.Adam) over its initial `params`;
        None for a run without meta-parameters (a hand-designed optimizer: nothing to train)."""
        if not params:
            return None
        device = next(iter(params.values())).device
        return cls({k: v[None] for k, v in params.items()}, torch.tensor([beta], dtype=torch.float64, device=device),
                   grad_clip, log=log)

    def flatten(self, tree: dict) -> torch.Tensor:
        return torch.cat([tree[k].reshape(len(tree[k]), -1) for k in self.shapes], 1)

    def views(self, flat: torch.Tensor) -> dict:
        sizes = [math.prod(s) for s in self.shapes.values()]
        return {k: part.view(len(flat), *s) for (k, s), part in zip(self.shapes.items(), flat.split(sizes, 1))}

    def step(self, grads: dict, loss: torch.Tensor, n: int, running: torch.Tensor) -> torch.Tensor:
        """One update from the summed gradients `grads` and losses (P,) of `n` tasks, applied only
        to members that are `running` and whose loss and gradients are finite; returns which were."""
        return self._update(self, self.flatten(grads), loss, n, running)

    def apply_update(self, grad: torch.Tensor, loss: torch.Tensor, n: int, running: torch.Tensor) -> torch.Tensor:
        """The update on a flat gradient (P, N), uncompiled: `step` runs it (compiled under
        train.compile); a caller that compiles a larger function around it (WholeIteration) calls it."""
        # the solo trainer's guard: a summed gradient beyond sqrt(max float) * n counts as non-finite
        finite = torch.isfinite(loss) & (grad.abs() < torch.finfo(loss.dtype).max ** 0.5 * n).all(1)
        active, grad = running & finite, grad / n
        if self.grad_clip:  # each member's global norm, in float64 as the solo trainer
            norm = grad.double().pow(2).sum(1).sqrt()
            scale = torch.where(norm > self.grad_clip, self.grad_clip / norm, torch.ones_like(norm))
            grad = grad * scale.to(grad.dtype)[:, None]
        steps = self.steps + active.long()
        t = steps.double()
        b1, b2 = BETAS
        step_size = (self.beta / (1 - b1 ** t)).to(grad.dtype)[:, None]  # float64, as Adam's Python floats
        bc2_sqrt = (1 - b2 ** t).sqrt().to(grad.dtype)[:, None]
        a = active[:, None]
        with torch.no_grad():
            m = self.exp_avg.lerp(grad, 1 - b1)
            v = self.exp_avg_sq.mul(b2).addcmul(grad, grad, value=1 - b2)
            new = self.flat + (-step_size) * m / (v.sqrt() / bc2_sqrt).add(EPS)  # addcdiv: p + (value * m) / denom
            self.exp_avg.copy_(torch.where(a, m, self.exp_avg))
            self.exp_avg_sq.copy_(torch.where(a, v, self.exp_avg_sq))
            self.flat.copy_(torch.where(a, new, self.flat))
            self.steps.copy_(steps)
        return finite

    def select(self, rows: list[int]) -> StackedAdam:
        """A new stacked step over these rows only (copies): the survivors of a halving rung, or
        one row that leaves the stack and keeps its own state."""
        new = copy.copy(self)
        idx = torch.tensor(rows, dtype=torch.long, device=self.flat.device)
        new.flat, new.exp_avg, new.exp_avg_sq = (x[idx].clone() for x in (self.flat, self.exp_avg, self.exp_avg_sq))
        new.steps, new.beta = self.steps[idx].clone(), self.beta[idx].clone()
        new.params = new.views(new.flat)
        return new

    def copy_row(self, src: int, dst: int) -> None:
        """Row `dst` becomes row `src`, bitwise: parameters, moments and step count (PBT's exploit)."""
        with torch.no_grad():
            for x in (self.flat, self.exp_avg, self.exp_avg_sq, self.steps):
                x[dst] = x[src]

    def set_beta(self, row: int, beta: float) -> None:
        self.beta[row] = beta

    # -- torch.optim.Adam's state-dict format, one row (run) at a time -------------------------
    def row_state(self, row: int, beta: float) -> dict:
        """Row `row`'s state as torch.optim.Adam.state_dict() over its parameters in key order
        (no per-parameter state before the first step, as torch.optim.Adam)."""
        steps = int(self.steps[row])
        exp_avg, exp_avg_sq = self.views(self.exp_avg), self.views(self.exp_avg_sq)
        state = {} if steps == 0 else {
            j: {"step": torch.tensor(float(steps)), "exp_avg": exp_avg[k][row].clone(),
                "exp_avg_sq": exp_avg_sq[k][row].clone()} for j, k in enumerate(self.shapes)}
        group = {"lr": beta, "betas": BETAS, "eps": EPS, **ADAM_GROUP, "params": list(range(len(self.shapes)))}
        return {"state": state, "param_groups": [group]}

    def load_row_state(self, row: int, state: dict) -> None:
        """Row `row`'s moments and step count from a torch.optim.Adam state dict (row_state's format)."""
        per_param = state["state"]
        exp_avg, exp_avg_sq = self.views(self.exp_avg), self.views(self.exp_avg_sq)
        with torch.no_grad():
            self.steps[row] = int(per_param[0]["step"]) if per_param else 0
            for j, k in enumerate(self.shapes):
                exp_avg[k][row] = per_param[j]["exp_avg"] if per_param else 0
                exp_avg_sq[k][row] = per_param[j]["exp_avg_sq"] if per_param else 0


class CompiledAdamUpdate(CompiledWithFallback):
    """StackedAdam.apply_update, compiled (train.compile) or eager."""

    what = "Adam update"

    def __init__(self, log=print, compile: bool = False, dynamic_members: bool = False):
        super().__init__(log, compile)
        self.dynamic_members = dynamic_members
        self._compiled = torch.compile(StackedAdam.apply_update, dynamic=False, fullgraph=True) if compile else None

    def __call__(self, adam: StackedAdam, grad, loss, n, running):
        eager = lambda: StackedAdam.apply_update(adam, grad, loss, n, running)  # noqa: E731
        if self.dynamic_members:
            if len(grad) == 1:  # a size-1 dimension cannot stay symbolic
                return eager()
            mark_dynamic_rows({"g": grad, "l": loss, "r": running, "p": adam.flat, "m": adam.exp_avg,
                               "v": adam.exp_avg_sq, "s": adam.steps, "b": adam.beta})
        return self._run(lambda: self._compiled(adam, grad, loss, n, running), eager)
