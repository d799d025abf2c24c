"""A learned-optimizer config turned into the objects that do the work (Andrychowicz et al. 2016):
the optimizer's update rule, the optimizee distribution, and the shard functions that the trainer
and every Ray worker call - the counterpart of `Experiment` for the "optimizer" family of methods.

Meta-training: a trajectory of `inner_steps` optimizee steps (T, the paper's 100) is cut into
unrolls of `train.unroll` steps (the paper's 20); meta-iteration i runs unroll i mod (T / unroll)
of trajectory i div (T / unroll) and returns the gradient of

    L(phi) = sum over the unroll's steps t of f_t(theta_t)       (w_t = 1)

w.r.t. phi. The optimizee state (theta and the optimizer's carry) at the end of an unroll is the
`carry` handed back to the driver and passed into the next unroll, detached: truncated BPTT. The
gradient the optimizer reads is computed at a detached theta, so d grad_t / d phi = 0 (first order).
At step t the optimizee sees minibatch t: f_t(theta_t) is both the meta-loss term and the source of
grad_t, which produces theta_{t+1}.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from pipeline.config import Config
from pipeline.core.meta_batch import ShardResult, zeros_where_unused
from pipeline.core.rules import get_rule
from pipeline.shards.compiled import COMPILE_AUTO_UNROLLS, CompiledWithFallback, ExecutionPlan
from pipeline.shards.experiment import set_precision
from tasks import make_distribution, samples_on_device
from tasks.optimizees import RandomlyScaled, unseen_steps
from tasks.sampling import sample_optimizees


def optimizee_gradient(distribution, theta: torch.Tensor, problem: dict, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(f_t(theta), grad f_t(theta)) per optimizee, both constants: the optimizer's input."""
    with torch.enable_grad():
        th = theta.detach().requires_grad_(True)
        loss = distribution.loss(th, problem, t)
        (g,) = torch.autograd.grad(loss.sum(), th)
    return loss.detach(), g


def run_steps(rule, params: dict, distribution, problem: dict, theta: torch.Tensor, carry: dict, *,
              start: int, steps: int, alpha: float, update=None,
              term=None, watch=None) -> tuple[list[torch.Tensor], torch.Tensor, dict]:
    """Steps start+1 .. start+steps from theta_start: ([f_t(theta_t) for each step], theta, carry).

    The losses keep the graph to `params` (the meta-loss terms); the gradients fed to the optimizer
    do not. `update`: rule.update or a compiled copy of it (CompiledUpdate). `term`: f_t, the
    distribution's loss by default (train.meta_loss: heldout passes distribution.meta_loss: the loss
    on the optimizee's held-out data); the gradients stay the training minibatch's. `watch(t, theta_t)`,
    where given, sees every step's parameters (the evaluation's unseen-data curve)."""
    update = update or rule.update
    term = term or distribution.loss
    _, g = optimizee_gradient(distribution, theta, problem, start)
    losses = []
    for t in range(start + 1, start + steps + 1):
        fast, carry = update({"theta": theta}, {"theta": g}, None, params, {}, carry, alpha)
        theta = fast["theta"]
        losses.append(term(theta, problem, t))
        if watch is not None:
            watch(t, theta)
        if t < start + steps:
            _, g = optimizee_gradient(distribution, theta, problem, t)
    return losses, theta, carry


def flushing_denormals(fn):
    """Run `fn` with subnormal floats flushed to zero on this CPU thread, then restore PyTorch's
    default. A meta-trained LSTM's saturated gates and an optimizee's saturated sigmoids produce
    subnormal numbers, which the CPU handles slowly: a trained MNIST optimizer's compiled unroll took
    1.38x as long with them, averaged over 6 trajectories (1.05-1.78x for single ones;
    benchmarks/RESULTS.md). Values below 1.2e-38 (float32) become 0; a few-shot run in the same
    process is unaffected."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        torch.set_flush_denormal(True)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_flush_denormal(False)
    return wrapper


class CompiledUpdate(CompiledWithFallback):
    """A learned rule's update step under torch.compile (train.compile): the coordinate-wise LSTM's
    gate arithmetic - a dozen elementwise ops per layer and step over every coordinate - fused,
    forward and backward; 1.4-1.5x per training unroll on one CPU thread, MNIST and quadratic
    optimizees, compiled in 2-8 s (benchmarks/RESULTS.md)."""

    def __init__(self, rule, log=print):
        super().__init__(log)
        self.rule, self.what = rule, f"{rule.name} update step"
        self._compiled = torch.compile(rule.update, dynamic=False)

    def __call__(self, *args):
        return self._run(lambda: self._compiled(*args), lambda: self.rule.update(*args))


class OptimizerExperiment:
    """The learned-optimizer family's shard source (pipeline/shards/sources.py, ShardSource)."""

    compile_auto_from = COMPILE_AUTO_UNROLLS  # train.compile: auto compiles runs of at least this many unrolls

    def __init__(self, cfg: Config, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        self.cfg, self.dtype, self.device = cfg, dtype, device
        set_precision(cfg.train.precision, device)
        self.heldout = cfg.train.meta_loss == "heldout"  # each step's meta-loss term on data never trained on
        self.distribution = make_distribution(cfg.task, cfg.model, heldout=self.heldout)
        if cfg.train.random_scaling:
            self.distribution = RandomlyScaled(self.distribution, cfg.train.random_scaling)
        self.sample_on_device = samples_on_device(cfg.task, device)
        self.rule = get_rule(cfg.method)
        self.unroll = cfg.train.unroll or cfg.inner_steps
        self.unrolls = cfg.inner_steps // self.unroll  # unrolls per trajectory
        self.metric_name = f"final {self.distribution.loss_name}"
        # the learned rule's update step, in training unrolls and evaluations; the hand-designed
        # rules (baselines) stay eager
        self.plan = ExecutionPlan.of(cfg, self.compile_auto_from)
        self.update = CompiledUpdate(self.rule) if self.rule.learned and self.plan.compile else self.rule.update

    def set_chunk_size(self, tasks_per_vmap: int) -> None:
        """Optimizees are stepped all at once: train.tasks_per_vmap does not apply."""

    def time_chunk_sizes(self, params: dict, indices: Sequence[int]) -> dict[int, float]:
        return {}  # nothing to choose (set_chunk_size)

    def init_params(self) -> dict:
        gen = torch.Generator().manual_seed(self.cfg.seed)
        meta = self.rule.init_meta(None, {"theta": torch.empty(0, dtype=self.dtype)}, gen)
        return {k: v.to(self.device) for k, v in meta.items()}

    def updated_fraction(self, params: dict) -> None:
        return None

    def sample(self, *, split: str, seed: int, iteration: int, indices: Sequence[int], steps: int) -> dict:
        return sample_optimizees(self.distribution, seed=seed, split=split, iteration=iteration, indices=indices,
                                 steps=steps, dtype=self.dtype, device=self.device,
                                 on_device=self.sample_on_device)

    @staticmethod
    def objective(losses: list[torch.Tensor]) -> torch.Tensor:
        """The meta-loss per optimizee (B,) from the unroll's [f_t(theta_t)]: sum_t f_t, w_t = 1."""
        return torch.stack(losses, 0).sum(0)

    @flushing_denormals
    def train_shard(self, params: dict, iteration: int, indices: Sequence[int],
                    carry: dict | None = None) -> ShardResult:
        """One unroll of the optimizees `indices`: summed meta-loss, its gradient w.r.t. phi, and the
        optimizees' state at the end of the unroll (ShardResult.carry; None after a
        trajectory's last unroll)."""
        trajectory, u = divmod(iteration, self.unrolls)
        problem = self.sample(split="train", seed=self.cfg.seed, iteration=trajectory, indices=indices,
                              steps=self.cfg.inner_steps)
        if u == 0:
            theta = problem["theta0"]
            state = self.rule.init_carry(params, {"theta": theta})
        else:
            if carry is None:
                raise RuntimeError(f"iteration {iteration} continues a trajectory but no optimizee state was passed")
            theta = carry["theta"].to(self.device, self.dtype)
            state = {k: v.to(self.device, self.dtype) for k, v in carry.items() if k != "theta"}
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        start = u * self.unroll
        term = self.distribution.meta_loss if self.heldout else self.distribution.loss
        before = term(theta, problem, start).detach()  # the logged curve: the meta-loss's terms
        losses, theta, state = run_steps(self.rule, leaves, self.distribution, problem, theta, state,
                                         start=start, steps=self.unroll, alpha=self.cfg.alpha, update=self.update,
                                         term=term)
        meta = self.objective(losses)
        if leaves and meta.requires_grad:
            grads = torch.autograd.grad(meta.sum(), list(leaves.values()), allow_unused=True)
            grads = zeros_where_unused(leaves, grads)
        else:
            grads = {k: torch.zeros_like(v) for k, v in leaves.items()}
        after = losses[-1].detach()
        # the optimizees' state for the next unroll; none after a trajectory's last (the next
        # iteration starts fresh optimizees, and a checkpoint need not hold a dead state: 10 MB for
        # two MNIST optimizees)
        carry = (None if u == self.unrolls - 1
                 else {"theta": theta.detach(), **{k: v.detach() for k, v in state.items()}})
        return ShardResult(grads, meta.detach().sum().item(), len(indices), torch.stack([before.sum(), after.sum()]),
                           after.sum().item(), carry)

    @flushing_denormals
    @torch.no_grad()
    def eval_shard(self, params: dict, indices: Sequence[int], *, optimizer: str, alpha: float, seed: int,
                   split: str, steps: int) -> tuple[torch.Tensor, ...]:
        """Optimizees `indices` of the evaluation set trained for `steps` steps by `optimizer` (this
        run's learned rule or a baseline) with step size alpha: (final loss (B,), the loss f_t(theta_t)
        at every step t = 0..steps (B, steps + 1)), and, where the problem has data the optimizees
        never train on, their loss there at the steps `unseen_steps(steps)` (B, points): its last
        column is the loss after the last step."""
        rule = get_rule(optimizer)
        problem = self.sample(split=split, seed=seed, iteration=0, indices=indices, steps=steps)
        theta = problem["theta0"]
        params = {k: v.detach() for k, v in params.items()}
        first = self.distribution.loss(theta, problem, 0)
        points, unseen = set(unseen_steps(steps)), []

        def watch(t, theta_t):
            if t in points:
                unseen.append(self.distribution.unseen_loss(theta_t, problem))

        watch(0, theta)
        if unseen[0] is None:  # no unseen data: nothing to watch
            points, unseen = set(), []
        # this run's learned rule runs compiled where its training does (about 2x per MNIST trajectory)
        update = self.update if optimizer == self.cfg.method else rule.update
        losses, theta, _ = run_steps(rule, params, self.distribution, problem, theta,
                                     rule.init_carry(params, {"theta": theta}), start=0, steps=steps, alpha=alpha,
                                     update=update, watch=watch if points else None)
        curve = torch.stack([first, *losses], 1)
        final = self.distribution.final_loss(theta, problem, steps)
        return (final, curve) if not unseen else (final, curve, torch.stack(unseen, 1))

    def optimizers(self) -> dict[str, float]:
        """Every optimizer the evaluation compares: this run's method, then the baselines."""
        return {self.cfg.method: self.cfg.alpha,
                **{k: v for k, v in self.cfg.eval.baselines.items() if k != self.cfg.method}}
