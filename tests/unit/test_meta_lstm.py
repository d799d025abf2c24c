"""Meta-Learner LSTM: reduction to SGD and what is learned on dense cells, the preprocessing, and
meta-test batch norm (conv cells, per-episode batch norm, its gate figure and a short meta-training
run on real Omniglot: tests/integration)."""
import math

import pytest
import torch

from pipeline.config import load_config
from pipeline.core.meta_batch import InnerSettings, inner_adapt
from pipeline.core.reference import task_slice
from pipeline.core.rules.meta_lstm import P, preprocess

from helpers import (
    check_c0_and_every_meta_learner_weight_receive_gradients,
    check_forced_gates_give_sgd_with_step_alpha,
    conv_batch,
    conv_learner,
    perturbed_params,
)


@pytest.mark.parametrize("conv", [False], ids=["mlp"])
def test_forced_gates_give_sgd_with_step_alpha(conv):
    check_forced_gates_give_sgd_with_step_alpha(conv)


def test_preprocessing_matches_its_definition_at_and_around_the_threshold():
    t = math.exp(-P)
    x = torch.tensor([0.0, t / 2, -t / 2, t * (1 - 1e-9), t, -t, t * (1 + 1e-9), 1e-3, -2.5, 7e4], dtype=torch.float64)
    out = preprocess(x)
    for v, (a, b) in zip(x.tolist(), out.tolist()):
        if abs(v) >= t:
            assert a == pytest.approx(math.log(abs(v)) / P, rel=1e-12) and b == math.copysign(1.0, v)
        else:
            assert a == -1.0 and b == pytest.approx(math.exp(P) * v, rel=1e-12)
    # continuous across |x| = e^-p: both parts meet (-1, sign x) from either side
    below, above = preprocess(torch.tensor([t * (1 - 1e-9), t * (1 + 1e-9)], dtype=torch.float64))
    assert torch.allclose(below, above, atol=1e-8) and torch.allclose(above, torch.tensor([-1.0, 1.0],
                                                                                         dtype=torch.float64))


@pytest.mark.parametrize("conv", [False], ids=["mlp"])
def test_c0_and_every_meta_learner_weight_receive_gradients(conv):
    check_c0_and_every_meta_learner_weight_receive_gradients(conv)


# ---------------------------------------------------------------- meta-test batch norm (paper 3.4)

def _support_episode(method="metalstm", n_query=6):
    learner = conv_learner(method, filters=4, size=8, ways=3)
    params = perturbed_params(learner)
    task = task_slice(conv_batch(learner, params, n=1), 0)
    gen = torch.Generator().manual_seed(11)
    task["x_query"] = torch.randn(n_query, 1, 8, 8, generator=gen, dtype=torch.float64)
    task["y_query"] = torch.arange(n_query) % 3
    return learner, params, task


def _query_logits(learner, params, task, query_bn, steps=3):
    from pipeline.core.learners import forward

    fast, _ = inner_adapt(learner, InnerSettings(0.1, steps, query_bn=query_bn), params, task)
    with torch.no_grad():
        return forward(learner.net, {**params, **fast}, task["x_query"]), fast


def test_meta_test_query_never_normalised_with_its_own_statistics():
    """query_bn="support": the logits of query image 0 do not change when every other query image
    is replaced (nothing of the query batch enters its normalisation), nor when image 0 is predicted
    alone; with "batch" (control) they do change, so the test can fail."""
    learner, params, task = _support_episode()
    logits, _ = _query_logits(learner, params, task, "support")
    other = dict(task, x_query=task["x_query"].clone())
    other["x_query"][1:] = 3.0 * torch.randn(other["x_query"][1:].shape, dtype=torch.float64,
                                             generator=torch.Generator().manual_seed(12)) + 1.0
    logits_other, _ = _query_logits(learner, params, other, "support")
    alone, _ = _query_logits(learner, params, dict(task, x_query=task["x_query"][:1], y_query=task["y_query"][:1]),
                             "support")
    torch.testing.assert_close(logits_other[0], logits[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(alone[0], logits[0], rtol=1e-12, atol=1e-12)
    batch_logits, _ = _query_logits(learner, params, task, "batch")
    batch_other, _ = _query_logits(learner, params, other, "batch")
    assert (batch_other[0] - batch_logits[0]).abs().max() > 1e-3


def test_support_averages_are_the_running_statistics_of_the_support_passes():
    """With one inner step the first cell's averages are the support set's batch statistics at the
    initial weights, as torch.nn.BatchNorm2d(momentum=None) collects them in training mode (a
    reference independent of pipeline.core.learners), the variance unbiased as PyTorch's running_var."""
    import torch.nn.functional as F

    learner, params, task = _support_episode()
    _, fast = _query_logits(learner, params, task, "support", steps=1)
    bn = torch.nn.BatchNorm2d(4, momentum=None).double().train()
    bn(F.conv2d(task["x_support"], params["conv0.W"], params["conv0.b"], stride=2, padding=1))
    torch.testing.assert_close(fast["conv0.bn_mean"], bn.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast["conv0.bn_var"], bn.running_var, rtol=1e-12, atol=1e-12)
    assert set(k for k in fast if ".bn_" in k and k.endswith(("mean", "var"))) == \
        {f"conv{i}.bn_{s}" for i in range(4) for s in ("mean", "var")}


def test_query_bn_defaults_follow_each_paper_and_bad_values_are_refused(tmp_path):
    from pipeline.config import ConfigError
    from pipeline.core.meta_batch import query_bn

    for method, want in (("metalstm", "support"), ("maml", "batch")):
        cfg = load_config("metalstm_omniglot_5w1s_cpu", overrides=[f"method={method}"], local=False)
        assert query_bn(cfg) == want
    cfg = load_config("metalstm_omniglot_5w1s_cpu", overrides=["eval.query_bn=batch"], local=False)
    assert query_bn(cfg) == "batch"
    with pytest.raises(ConfigError,
                       match=r"^eval.query_bn: unknown choice 'running'; allowed: '', 'batch', 'support'$"):
        load_config("metalstm_omniglot_5w1s_cpu", overrides=["eval.query_bn=running"], local=False)
