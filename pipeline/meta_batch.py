"""The single place where tasks are adapted: a shard of tasks, batched over the task dimension.

`shard_meta_gradient` returns the summed post-adaptation query loss of a shard and its gradient
w.r.t. every meta-parameter. Tasks are vectorised with `torch.func.vmap`; the inner step is
`torch.func.grad`, differentiated by the outer autograd pass, so second-order terms flow unless
the rule is first-order. Both the in-process trainer and the Ray workers call these functions.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch
from torch.func import grad_and_value, vmap

from pipeline.learners import Learner, loss_and_metric  # noqa: F401 (Learner re-exported)


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
    def for_eval(cfg, steps: int | None = None, mask_mode: str | None = None) -> "InnerSettings":
        """The meta-test inner loop of a run's config (eval.inner_steps, eval.mask, eval.query_bn)."""
        from pipeline.config import query_bn

        return InnerSettings(cfg.alpha, cfg.eval.inner_steps if steps is None else steps, cfg.gumbel_temperature,
                             cfg.eval.mask if mask_mode is None else mask_mode, query_bn(cfg))


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
        create_graph = not rule.first_order and torch.is_grad_enabled() and any(v.requires_grad for v in params.values())
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


@dataclass
class ShardResult:
    """Sums over a shard's tasks; shards merge by adding (in a fixed order)."""

    grads: dict  # name -> summed gradient of the query loss
    loss_sum: float
    n_tasks: int
    curve_sum: torch.Tensor | None  # summed query loss before each inner step and after the last (None: not computed)
    metric_sum: float
    extra: dict = field(default_factory=dict)

    @staticmethod
    def merge(results: list["ShardResult"]) -> "ShardResult":
        """Sums added in shard order; a per-task carry (learned optimizers) concatenated in task order."""
        first, rest = results[0], results[1:]
        grads = {k: v.clone() for k, v in first.grads.items()}
        for r in rest:
            for k in grads:
                grads[k] += r.grads[k]
        extra = {}
        if "carry" in first.extra:
            extra["carry"] = {k: torch.cat([torch.as_tensor(r.extra["carry"][k]) for r in results])
                              for k in first.extra["carry"]}
        return ShardResult(grads, first.loss_sum + sum(r.loss_sum for r in rest),
                           first.n_tasks + sum(r.n_tasks for r in rest),
                           None if first.curve_sum is None else first.curve_sum + sum(r.curve_sum for r in rest)
                           if rest else first.curve_sum.clone(),
                           first.metric_sum + sum(r.metric_sum for r in rest), extra)


def shard_meta_gradient(learner: Learner, inner: InnerSettings, params: dict, batch: dict,
                        chunk_size: int | None = None) -> ShardResult:
    """Summed query loss of a batch of tasks after adaptation, and its meta-gradient.

    Tasks are vmapped and the inner step is torch.func.grad; the outer gradient is plain autograd
    through that (the same numbers as an outer torch.func.grad, 1.4-2x faster on small models
    because every op then carries one functorch level fewer). chunk_size bounds the tasks per
    vectorised call: conv nets on CPU run faster in chunks that keep activations in cache."""
    return _shard_result(*_autograd_gradient(lambda leaves, b: _shard_sums(learner, inner, leaves, b, chunk_size),
                                             params, batch), batch)


# train.tasks_per_vmap: auto. Tasks per vectorised call, timed on the run's first shard like cuDNN's
# benchmark mode: on CPU a conv4 shard in one vmap holds every task's activations at once, out of
# cache, and can be slower than the per-task loop (benchmarks/RESULTS.md); 1 is that loop itself, so
# auto is never slower than it. Sine MLPs pick the whole shard.
CHUNK_CANDIDATES = (16, 8, 4, 2, 1)
CHUNK_TOLERANCE = 0.05  # the largest chunk within 5% of the fastest: fewer calls, and timing noise cannot flip it


def time_chunk_sizes(run, shard_size: int, reps: int = 3) -> dict[int, float]:
    """Seconds per call of run(chunk_size) for the whole shard (key 0) and every candidate chunk
    smaller than the shard, and 1 (the loop) always: the best of `reps` calls after one warm-up
    call, or a single call where one takes over 0.25 s (conv shards: timer noise is small there,
    and the timing costs the run seconds)."""
    times = {}
    for c in dict.fromkeys((0, *[c for c in CHUNK_CANDIDATES if c < shard_size], 1)):
        t0 = time.perf_counter()
        run(c or None)  # warm-up: first-call allocations
        n = reps if time.perf_counter() - t0 < 0.25 else 1
        best = math.inf
        for _ in range(n):
            t0 = time.perf_counter()
            run(c or None)
            best = min(best, time.perf_counter() - t0)
        times[c] = best
    return times


def pick_chunk_size(times: dict[int, float]) -> int:
    """The largest chunk (0 = whole shard first) whose time is within CHUNK_TOLERANCE of the fastest
    and no slower than the per-task loop's (1) as timed: a batched choice is never the slower one
    (a chunk 5% slower than the loop was chosen before: Meta-LSTM Omniglot, 0.95x)."""
    fastest, loop = min(times.values()), times.get(1, math.inf)
    return next(c for c, t in times.items() if t <= fastest * (1 + CHUNK_TOLERANCE) and t <= loop)


def describe_chunk_times(times: dict[int, float], chosen: int) -> str:
    """One line: the choice and every candidate's time per shard call."""
    cells = ", ".join(f"{'whole' if c == 0 else c} {t * 1e3:.1f}" for c, t in times.items())
    return f"train.tasks_per_vmap: auto -> {chosen or 'whole shard'} (ms per shard call: {cells})"


def _shard_sums(learner: Learner, inner: InnerSettings, leaves: dict, batch: dict, chunk_size: int | None,
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


def _autograd_gradient(forward, params: dict, batch: dict) -> tuple:
    """(grads, loss, curve, metric) of a shard forward, its (summed) loss differentiated by autograd."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss, curve, metric = forward(leaves, batch)
    grads = torch.autograd.grad(loss.sum(), list(leaves.values()), allow_unused=True)
    return zeros_where_unused(leaves, grads), loss.detach(), None if curve is None else curve.detach(), metric.detach()


def _shard_result(grads: dict, loss, curve, metric, batch: dict) -> ShardResult:
    return ShardResult(grads, loss.item(), batch["x_support"].shape[0], curve, metric.item())


def use_cpus(cpus: float) -> None:
    """Compute on the CPUs a Tune trial or a shard worker was given: torch's threads, and
    torch.compile's compile workers (Inductor's default is one per core of the machine, cores that
    other trials hold; with one, no pool of compile processes is started: `metatrain sweep
    sine_models` took 5.9 min cold with the pool, 5.1 min without, benchmarks/RESULTS.md)."""
    import torch._inductor.config

    n = max(1, int(cpus))
    torch.set_num_threads(n)
    torch._inductor.config.compile_threads = n


class CompiledWithFallback:
    """A function under torch.compile beside its eager twin (train.compile): compiled on the first
    call, its time said once; where compilation or a compiled call fails (no C++ compiler, an op
    Dynamo cannot trace) it says so in one line and runs eagerly from then on."""

    what = "function"  # how the log lines name it

    def __init__(self, log=print, compile: bool = True):
        self.log, self.eager, self.compiled = log, not compile, False

    def _run(self, compiled_call, eager_call):
        if self.eager:
            return eager_call()
        t0 = time.perf_counter()
        try:
            out = compiled_call()
        except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, say so once
            self.eager = True
            first_line = (str(e).strip().splitlines() or [""])[0][:200]
            self.log(f"train.compile: compilation failed ({type(e).__name__}: {first_line}); running eagerly")
            return eager_call()
        if not self.compiled:
            self.compiled = True
            self.log(f"train.compile: {self.what} compiled in {time.perf_counter() - t0:.1f} s")
        return out


class CompiledShardFunction(CompiledWithFallback):
    """`shard_meta_gradient` as one compiled graph: the forward (vmapped inner loops and query
    losses) and the outer gradient (`torch.func.grad_and_value` of the summed loss) traced together
    by torch.compile. Per-op dispatch, not arithmetic, bounds small models (sine MLPs), and a
    compiled graph pays it once per call instead of once per op; tracing the outer gradient too
    (rather than autograd through a compiled forward) also drops the autograd engine's per-node
    work and the saved-tensor bookkeeping between two graphs: about 2x on a population of 18
    MT-nets (benchmarks/RESULTS.md).

    With compile=False it is `shard_meta_gradient` itself (runs and populations hold one shard
    function whatever train.compile says). Compiles on the first call and again only for a new
    shard shape; falls back to eager as CompiledWithFallback says: the numbers are the same up to
    float rounding (tests/test_compile.py: 1e-5)."""

    what = "shard function"

    def __init__(self, learner: Learner, inner: InnerSettings, chunk_size: int | None = None, log=print, *,
                 sums=None, result=None, compile: bool = True):
        # sums/result: a population's forward and ShardResult (pipeline/population_shards.py)
        super().__init__(log, compile)
        sums, self._result = sums or _shard_sums, result or _shard_result
        self._eager_forward = lambda leaves, batch: sums(learner, inner, leaves, batch, chunk_size)

        def total(leaves, batch):  # inner gradients by torch.func: the graph is differentiated as a whole
            loss, curve, metric = sums(learner, inner, leaves, batch, chunk_size, True)
            return loss.sum(), (loss, metric) if curve is None else (loss, metric, curve)  # aux: tensors only

        # fullgraph: a graph break would silently run torch.func's outer gradient eagerly (slower
        # than the eager path's autograd); as an error it falls back to that path, said once. The
        # same for Dynamo's recompile limit (8 graphs per code object, and every instance's step is
        # the same code object): a process that compiles more (a benchmark) gets the fallback line.
        if compile:
            torch._dynamo.config.fail_on_recompile_limit_hit = True
        self._forward = torch.compile(grad_and_value(total, has_aux=True), dynamic=False,
                                      fullgraph=True) if compile else None

    def _eager_call(self, params: dict, batch: dict) -> ShardResult:
        return self._result(*_autograd_gradient(self._eager_forward, params, batch), batch)

    def _compiled_call(self, params: dict, batch: dict) -> ShardResult:
        grads, (_, (loss, metric, *curve)) = self._forward({k: v.detach() for k, v in params.items()}, batch)
        return self._result(grads, loss, curve[0] if curve else None, metric, batch)

    def __call__(self, params: dict, batch: dict) -> ShardResult:
        return self._run(lambda: self._compiled_call(params, batch), lambda: self._eager_call(params, batch))


def training_shard_functions(learner: Learner, inner: InnerSettings, chunk_size: int | None, compile: bool,
                             **kw) -> dict[bool, CompiledShardFunction]:
    """A run's (or population's) training shard functions, keyed by whether they compute the
    query-loss curve (config.curve_at). Only the one without it is compiled: curve iterations are
    1-10% of a run's, and compiling their graph as well cost 7-12 s per sine run or population on a
    cold cache (a tenth of a population in `metatrain sweep sine_models`), more than running them
    eagerly costs over 60,000 iterations (benchmarks/RESULTS.md, "End to end")."""
    return {curve: CompiledShardFunction(learner, replace(inner, curve=curve), chunk_size,
                                         compile=compile and not curve, **kw) for curve in (True, False)}


def shard_evaluate(learner: Learner, inner: InnerSettings, params: dict, batch: dict,
                   chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task query metric after adaptation (B,) and per-task query-loss curve (B, steps + 1)."""
    params = {k: v.detach() for k, v in params.items()}
    _, (curves, metrics) = _adapt_tasks(learner, inner, params, batch, chunk_size)
    return metrics, curves
