"""train.compile: what runs under torch.compile, when, and on how many CPUs. A shard function is
compiled as one graph (forward and outer gradient) beside its eager twin, and falls back to the
twin in one logged line where compilation fails."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch.func import grad_and_value

from pipeline.core.meta_batch import InnerSettings, Learner, ShardResult, autograd_gradient, shard_result, shard_sums

COMPILE_AUTO_ITERATIONS = 10_000
COMPILE_AUTO_UNROLLS = 1_000  # a learned optimizer's iteration (an unroll of 20 LSTM steps) saves more


@dataclass(frozen=True)
class ExecutionPlan:
    """How a run computes, resolved once from its config (`ExecutionPlan.of`) where its shard source
    is built; the source, a population and its whole-iteration step read this object, never
    train.compile itself.

    compile: train.compile resolved ("auto": runs of at least the family's `auto_from` iterations,
      where the saving outweighs ~20-60 s of compiling, benchmarks/bench_compile.py).
    graphs: train.compile "graphs": the compiled shard function is also captured as a CUDA graph and
      replayed (torch.compile's "reduce-overhead"); on a CPU it is the plain compiled function.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> ExecutionPlan.of(NS(train=NS(compile="auto"), iterations=500), auto_from=10_000)
        ExecutionPlan(compile=False, graphs=False)
    """

    compile: bool
    graphs: bool

    @classmethod
    def of(cls, cfg, auto_from: int = COMPILE_AUTO_ITERATIONS) -> ExecutionPlan:
        mode = cfg.train.compile
        return cls(mode in ("always", "graphs") or (mode == "auto" and cfg.iterations >= auto_from), mode == "graphs")


CURVE_SAMPLES = 10


def curve_at(cfg, iteration: int) -> bool:
    """Whether training iteration `iteration` computes the query loss before each inner step (for
    metrics.jsonl's query_loss_per_step): CURVE_SAMPLES evenly spaced iterations per log window, and
    the last. It costs a query forward per inner step - 62% of a miniImageNet 1-shot iteration on CPU
    (benchmarks/RESULTS.md) - and MAML's reference code, too, evaluates it on summary iterations only."""
    stride = max(1, cfg.train.log_every // CURVE_SAMPLES)
    return (iteration + 1) % stride == 0 or iteration + 1 == cfg.iterations


def use_cpus(cpus: float) -> None:
    """Compute on the CPUs a Tune trial or a shard worker was given: torch's threads, and
    torch.compile's compile workers (Inductor's default is one per core of the machine, cores that
    other trials hold; with one, no pool of compile processes is started to compete with them for
    the cores)."""
    import torch._inductor.config

    n = max(1, int(cpus))
    torch.set_num_threads(n)
    torch._inductor.config.compile_threads = n


class CompiledWithFallback:
    """A function under torch.compile beside its eager twin (train.compile): compiled on the first
    call, its time said once; where compilation or a compiled call fails (no C++ compiler, an op
    Dynamo cannot trace) it says so in one line and runs eagerly from then on."""

    what = "function"  # how the log lines name it

    graphs = False  # CUDA graphs requested (train.compile: graphs); a failure falls back to plain compiled

    def __init__(self, log=print, compile: bool = True):
        self.log, self.eager, self.compiled = log, not compile, False

    def _build(self, graphs: bool) -> None:
        """(Re)create the compiled callable, with CUDA graphs or without (subclasses that offer them)."""

    def _run(self, compiled_call, eager_call):
        if self.eager:
            return eager_call()
        t0 = time.perf_counter()
        try:
            out = compiled_call()
        except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, say so once
            first_line = (str(e).strip().splitlines() or [""])[0][:200]
            if self.graphs:  # first without CUDA graphs, then eagerly
                self.graphs = False
                self._build(False)
                self.log(f"train.compile: CUDA graphs failed ({type(e).__name__}: {first_line}); running compiled "
                         "without graphs")
                return self._run(compiled_call, eager_call)
            self.eager = True
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
    float rounding (tests/integration/test_compile.py: 1e-5)."""

    what = "shard function"

    def __init__(self, learner: Learner, inner: InnerSettings, chunk_size: int | None = None, log=print, *,
                 sums=None, result=None, compile: bool = True, dynamic_members: bool = False, graphs: bool = False):
        # sums/result: a population's forward and ShardResult (pipeline/shards/stacked.py);
        # dynamic_members: the leading (member) dimension of every input stays symbolic in the graph,
        # so a population that narrows (halving) keeps one graph; it costs 3-7% per call
        # (benchmarks/bench_dynamic_members.py), and a size-1 dimension would be specialised: callers pass >= 2 rows
        super().__init__(log, compile)
        self.dynamic_members = dynamic_members
        sums, self._result = sums or shard_sums, result or shard_result
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
        # total: the summed loss and its aux outputs, differentiable by torch.func (a population's
        # whole iteration differentiates it inside its own graph: pipeline/driver/population_step.py)
        self.total, self.graphs = total, graphs and compile
        self._forward = None
        if compile:
            self._build(self.graphs)

    def _build(self, graphs: bool) -> None:
        self._forward = torch.compile(grad_and_value(self.total, has_aux=True), dynamic=False, fullgraph=True,
                                      mode="reduce-overhead" if graphs else None)

    def _eager_call(self, params: dict, batch: dict) -> ShardResult:
        return self._result(*autograd_gradient(self._eager_forward, params, batch), batch)

    def _compiled_call(self, params: dict, batch: dict) -> ShardResult:
        params = {k: v.detach() for k, v in params.items()}
        if self.dynamic_members:  # contiguous: rows of a flat buffer and gathered groups alike (strides are guarded)
            params = {k: v.contiguous() for k, v in params.items()}
            mark_dynamic_rows(params, batch)
        replayed = self.graphs and next(iter(params.values())).is_cuda
        if replayed:  # a new step of the graph tree: the last replay's outputs may be overwritten now
            torch.compiler.cudagraph_mark_step_begin()
        grads, (_, (loss, metric, *curve)) = self._forward(params, batch)
        if replayed:  # outputs live in the graph's memory pool until the next replay: keep copies
            grads, loss, metric, curve = ({k: v.clone() for k, v in grads.items()}, loss.clone(), metric.clone(),
                                          [c.clone() for c in curve])
        return self._result(grads, loss, curve[0] if curve else None, metric, batch)

    def __call__(self, params: dict, batch: dict) -> ShardResult:
        return self._run(lambda: self._compiled_call(params, batch), lambda: self._eager_call(params, batch))


def mark_dynamic_rows(*trees) -> None:
    """The leading dimension of every tensor in these (nested) dicts, symbolic for torch.compile."""
    for tree in trees:
        for v in tree.values():
            mark_dynamic_rows(v) if isinstance(v, dict) else torch._dynamo.mark_dynamic(v, 0)


def training_shard_functions(learner: Learner, inner: InnerSettings, chunk_size: int | None, compile: bool,
                             **kw) -> dict[bool, CompiledShardFunction]:
    """A run's (or population's) training shard functions, keyed by whether they compute the
    query-loss curve (curve_at). Only the one without it is compiled: curve iterations are
    1-10% of a run's, and compiling their graph as well costs seconds per sine run or population on
    a cold cache, more than running them eagerly costs over a 60,000-iteration run."""
    return {curve: CompiledShardFunction(learner, replace(inner, curve=curve), chunk_size,
                                         compile=compile and not curve, **kw) for curve in (True, False)}
