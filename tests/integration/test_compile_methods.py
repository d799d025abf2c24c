"""train.compile for every few-shot method: the compiled shard function (forward, inner steps and
the outer gradient as one graph) gives the eager meta-gradient of the same tasks (1e-5), compiled,
not fallen back to eager. Small networks keep each compilation to seconds (MT-net and Meta-SGD
with two inner steps and a population: tests/integration/test_compile.py)."""
import pytest
import torch

from pipeline.core.meta_batch import InnerSettings, shard_meta_gradient
from pipeline.shards.compiled import CompiledShardFunction

from helpers import ALL_METHODS, make_learner, perturbed_params, sine_batch


@pytest.mark.parametrize("method", [m for m in ALL_METHODS if m not in ("mtnet", "metasgd")])
def test_every_method_compiled_equals_eager(method):
    # a run compiles in a process of its own; here one process compiles every method, and Dynamo
    # allows 8 graphs per code object (every shard function's is the same) before it gives up
    torch._dynamo.reset()
    learner = make_learner(method, hidden=(8, 8), init_std=0.3)
    params = {k: v.float() for k, v in perturbed_params(learner).items()}
    # two inner steps for the Meta-LSTM: at the first its hidden state is zero, so W_hh gets no gradient
    inner = InnerSettings(0.05, 2 if method == "metalstm" else 1, temperature=0.7)
    fn = CompiledShardFunction(learner, inner, log=lambda m: None)
    batch = sine_batch(learner, params, n=3, iteration=0, dtype=torch.float32)
    got, want = fn(params, batch), shard_meta_gradient(learner, inner, params, batch)
    assert not fn.eager, f"{method}: the compilation fell back to eager"
    assert got.loss_sum == pytest.approx(want.loss_sum, rel=1e-5)
    assert set(got.grads) == set(want.grads)
    for k, g in want.grads.items():
        assert g.abs().max() > 0, f"{method}: {k} has a zero meta-gradient (nothing compared)"
        torch.testing.assert_close(got.grads[k], g, rtol=1e-5, atol=1e-6, msg=lambda m: f"{method} {k}: {m}")
