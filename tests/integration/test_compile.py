"""train.compile: the compiled shard function gives the eager meta-gradient (1e-5), compiles once
per shard shape and says so once, and falls back to eager in one line where compilation fails.
Each compilation takes 15-60 s on 2 cores (which runs compile: tests/unit)."""
import pytest
import torch

from pipeline.config import load_config
from pipeline.core.meta_batch import InnerSettings, shard_meta_gradient
from pipeline.members import PopulationSpec
from pipeline.shards.compiled import CompiledShardFunction
from pipeline.shards.stacked import PopulationShards

from helpers import make_learner, perturbed_params, sine_batch


@pytest.mark.parametrize("method", ["mtnet", "metasgd"])
def test_compiled_shard_function_equals_eager(method):
    learner = make_learner(method, hidden=(16, 16), init_std=0.3)
    params = {k: v.float() for k, v in perturbed_params(learner).items()}
    inner = InnerSettings(0.05, 2, temperature=0.7)
    logs = []
    fn = CompiledShardFunction(learner, inner, log=logs.append)
    for iteration in range(3):  # new tasks, same shapes: one compilation
        batch = sine_batch(learner, params, n=5, iteration=iteration, dtype=torch.float32)
        got, want = fn(params, batch), shard_meta_gradient(learner, inner, params, batch)
        assert not fn.eager
        assert got.loss_sum == pytest.approx(want.loss_sum, rel=1e-5)
        assert got.n_tasks == want.n_tasks == 5
        torch.testing.assert_close(got.curve_sum, want.curve_sum, rtol=1e-5, atol=1e-6)
        for k, g in want.grads.items():
            torch.testing.assert_close(got.grads[k], g, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    assert len(logs) == 1 and logs[0].startswith("train.compile: shard function compiled in "), logs


@pytest.mark.parametrize("mode", ["always", "graphs"])
def test_compiled_population_equals_eager(tmp_path, mode):
    """A population's shard under train.compile (one graph for every member's forward and outer
    gradient) gives the eager population's per-member losses, curves and gradients; members differ
    in alpha, the Gumbel temperature and seed (their own task streams). The shard function without
    the query-loss curve is one graph, compiled whole (no silent eager fallback); the one with it
    (the few iterations that log a curve, curve_at) runs eagerly, compiling nothing. "graphs" (CUDA
    graphs on a GPU) is on a CPU the same compiled path, with torch.compile's reduce-overhead mode."""
    members = [{"alpha": 0.01, "seed": 0}, {"alpha": 0.05, "seed": 1, "gumbel_temperature": 0.5},
               {"alpha": 0.02, "seed": 0, "gumbel_temperature": 2.0}]
    cfgs = [load_config("sine_quick", {"method": "mtnet", "model.hidden": [16, 16], "meta_batch_size": 4,
                                       "train.compile": mode, "output_dir": str(tmp_path), **m}) for m in members]
    logs = []
    shards = PopulationShards(PopulationSpec.from_configs(cfgs), log=logs.append)
    assert shards.fns[False].graphs == (mode == "graphs")
    params = {k: torch.stack([v * (1 + 0.1 * i) for i in range(3)])
              for k, v in perturbed_params(shards.learner).items()}
    params = {k: v.float() for k, v in params.items()}
    for iteration, curve in [(0, True), (1, True), (2, False)]:  # new tasks, same shapes: one compilation in all
        batch = shards.sample(iteration, range(4))
        got, want = shards.fns[curve](params, batch), shards._shard_fn(None, compile=False, curve=curve)(params, batch)
        assert shards.fns[curve].eager == curve
        torch.testing.assert_close(got.loss_sum, want.loss_sum, rtol=1e-5, atol=1e-6)
        assert (got.curve_sum is None) == (want.curve_sum is None) == (not curve)
        if curve:
            torch.testing.assert_close(got.curve_sum, want.curve_sum, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.metric_sum, want.metric_sum, rtol=1e-5, atol=1e-6)
        for k, g in want.grads.items():
            assert g.shape[0] == 3 and g.abs().sum() > 0, k
            torch.testing.assert_close(got.grads[k], g, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    assert len(logs) == 1 and logs[0].startswith("train.compile: shard function compiled in "), logs


def test_a_failing_compilation_falls_back_to_eager_in_one_line():
    """The compiler's failure is simulated (no C++ toolchain is hard to arrange in a test): the
    compiled forward raises; the call still returns the eager result and says so once."""
    learner = make_learner("maml", hidden=(8,), init_std=0.3)
    params = learner.init_params(0)
    batch = sine_batch(learner, params, n=3, dtype=torch.float32)
    inner = InnerSettings(0.1, 1)
    logs = []
    fn = CompiledShardFunction(learner, inner, log=logs.append)

    def broken(*args):
        raise RuntimeError("InductorError: CppCompileError: C++ compile error\nlong compiler output")

    fn._forward = broken
    for _ in range(2):
        got, want = fn(params, batch), shard_meta_gradient(learner, inner, params, batch)
        assert got.loss_sum == want.loss_sum
    assert fn.eager and len(logs) == 1
    assert logs[0] == ("train.compile: compilation failed (RuntimeError: InductorError: CppCompileError: C++ compile "
                       "error); running eagerly")


def test_compiled_learned_optimizer_equals_eager():
    """A learned optimizer under train.compile (its LSTM update step compiled, the unroll's
    meta-gradient by autograd through it): two truncated unrolls of 3 quadratics give the eager
    meta-losses, gradients and optimizee states, and an evaluation the eager loss curves (1e-5);
    compiled once, said once."""
    from pipeline.driver.families import make_source

    sets = {"method": "l2l", "task.name": "quadratic", "inner_steps": 12, "train.unroll": 4, "iterations": 12,
            "meta_batch_size": 3, "alpha": 0.1, "backend": "local", "tracking.enabled": False}
    eager = make_source(load_config(None, {**sets, "train.compile": "never"}))
    compiled = make_source(load_config(None, {**sets, "train.compile": "always"}))
    logs = []
    compiled.update.log = logs.append
    params = eager.init_params()
    carries = {"eager": None, "compiled": None}
    for iteration in range(2):
        want = eager.train_shard(params, iteration, range(3), carries["eager"])
        got = compiled.train_shard(params, iteration, range(3), carries["compiled"])
        carries = {"eager": want.carry, "compiled": got.carry}
        assert got.loss_sum == pytest.approx(want.loss_sum, rel=1e-5)
        for k, g in want.grads.items():
            assert g.abs().sum() > 0
            torch.testing.assert_close(got.grads[k], g, rtol=1e-5, atol=1e-7, msg=lambda m: f"{k}: {m}")
        for k, v in want.carry.items():
            torch.testing.assert_close(got.carry[k], v, rtol=1e-5, atol=1e-7, msg=lambda m: f"carry {k}: {m}")
    # evaluation (no graph: a second compiled graph for the same step) gives eager's curves too
    kw = dict(optimizer="l2l", alpha=0.1, seed=5, split="test", steps=8)
    want_final, want_curve = eager.eval_shard(params, range(4), **kw)
    got_final, got_curve = compiled.eval_shard(params, range(4), **kw)
    torch.testing.assert_close(got_curve, want_curve, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got_final, want_final, rtol=1e-5, atol=1e-7)
    assert compiled.update.compiled and not compiled.update.eager
    assert eager.update == eager.rule.update  # never: plain eager
    assert len(logs) == 1 and logs[0].startswith("train.compile: l2l update step compiled in "), logs


def test_failing_cuda_graphs_fall_back_to_compiled_then_eager_a_line_each():
    """train.compile: graphs. The compiler's failures are simulated as above: with CUDA graphs, then
    without; the call returns the eager result, and each fallback said once."""
    learner = make_learner("maml", hidden=(8,), init_std=0.3)
    params = learner.init_params(0)
    batch = sine_batch(learner, params, n=3, dtype=torch.float32)
    inner = InnerSettings(0.1, 1)
    logs, built = [], []
    fn = CompiledShardFunction(learner, inner, log=logs.append, graphs=True)

    def broken(*args):
        raise RuntimeError("cudagraphs: an op that cannot be captured")

    fn._forward = broken
    fn._build = lambda graphs: (built.append(graphs), setattr(fn, "_forward", broken))
    for _ in range(2):
        got, want = fn(params, batch), shard_meta_gradient(learner, inner, params, batch)
        assert got.loss_sum == want.loss_sum
    assert built == [False] and fn.eager and not fn.graphs
    assert logs == ["train.compile: CUDA graphs failed (RuntimeError: cudagraphs: an op that cannot be captured); "
                    "running compiled without graphs",
                    "train.compile: compilation failed (RuntimeError: cudagraphs: an op that cannot be captured); "
                    "running eagerly"]
