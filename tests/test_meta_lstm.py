"""Meta-Learner LSTM: reduction to SGD, the preprocessing, what is learned, per-episode batch norm,
its gate figure, and a short meta-training run on real Omniglot."""
import math

import pytest
import torch
from conftest import NEW_IN_SMALL2, OMNIGLOT, SMALL1_ALPHABETS, conv_batch, conv_learner, make_learner, \
    needs_omniglot, perturbed_params, sine_batch
from reference import task_slice

from pipeline.config import load_config
from pipeline.learners import loss_and_metric
from pipeline.meta_batch import InnerSettings, inner_adapt, shard_evaluate, shard_meta_gradient
from pipeline.rules.meta_lstm import P, preprocess
from pipeline.trainer import Trainer


def forced_gates(params, alpha):
    """f = 1 and i = alpha exactly: W_F = W_I = 0, b_F = +inf, b_I = logit(alpha)."""
    p = dict(params)
    p["lstm.W_f"], p["lstm.W_i"] = torch.zeros_like(p["lstm.W_f"]), torch.zeros_like(p["lstm.W_i"])
    p["lstm.b_f"] = torch.full_like(p["lstm.b_f"], math.inf)
    p["lstm.b_i"] = torch.full_like(p["lstm.b_i"], math.log(alpha / (1 - alpha)))
    return p


def sgd(learner, params, task, keys, alpha, steps):
    fast = {k: params[k].clone().requires_grad_(True) for k in keys}
    for _ in range(steps):
        loss = loss_and_metric(learner.net, {**params, **fast}, task["x_support"], task["y_support"])[0]
        grads = torch.autograd.grad(loss, list(fast.values()))
        fast = {k: (v - alpha * g).detach().requires_grad_(True) for (k, v), g in zip(fast.items(), grads)}
    return fast


@pytest.mark.parametrize("conv", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["mlp", "conv"])
def test_forced_gates_give_sgd_with_step_alpha(conv):
    learner = conv_learner("metalstm") if conv else make_learner("metalstm", init_std=0.3)
    alpha, steps = 0.05, 4
    params = forced_gates(perturbed_params(learner), alpha)
    batch = conv_batch(learner, params) if conv else sine_batch(learner, params, n=3)
    keys = learner.rule.fast_keys(params)
    if conv:  # the learner's batch-norm scale/shift are learner parameters (cell state) too
        assert any(k.endswith("bn_scale") for k in keys) and any(k.endswith("bn_shift") for k in keys)
    for i in range(3):
        task = task_slice(batch, i)
        fast, _ = inner_adapt(learner, InnerSettings(alpha=0.123, steps=steps), params, task)  # alpha unused
        expected = sgd(learner, params, task, keys, alpha, steps)
        for k in keys:
            torch.testing.assert_close(fast[k], expected[k], rtol=1e-12, atol=1e-14)


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


@pytest.mark.parametrize("conv", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["mlp", "conv"])
def test_c0_and_every_meta_learner_weight_receive_gradients(conv):
    learner = conv_learner("metalstm") if conv else make_learner("metalstm", init_std=0.3)
    params = learner.init_params(0, torch.float64)
    batch = conv_batch(learner, params) if conv else sine_batch(learner, params, n=3)
    grads = shard_meta_gradient(learner, InnerSettings(alpha=0.1, steps=3), params, batch).grads
    for k in learner.rule.fast_keys(params):  # c0: the learned initialisation
        assert grads[k].abs().sum() > 0, k
    for k in ("lstm.W_ih", "lstm.W_hh", "lstm.bias", "lstm.W_f", "lstm.b_f", "lstm.W_i", "lstm.b_i"):
        assert grads[k].abs().sum() > 0, k
    # initialised as plain SGD with a small step: f close to 1, i small
    trace = []
    with torch.no_grad():
        inner_adapt(learner, InnerSettings(alpha=0.1, steps=2), params, task_slice(batch, 0), trace=trace)
    f, i = trace[0]["f"], trace[0]["i"]
    assert 0.97 < f.min() and f.max() < 1 and 0.005 < i.min() and i.max() < 0.02


@pytest.mark.slow  # conv cells
def test_no_batch_norm_statistic_leaks_from_one_task_to_the_next():
    """Guards the design (batch statistics of each forward pass, nothing stored): a learner with
    running statistics, or any state kept between calls, would fail these comparisons."""
    learner = conv_learner("metalstm")
    params = perturbed_params(learner)
    batch = conv_batch(learner, params, n=3)
    inner = InnerSettings(alpha=0.1, steps=3)
    together = shard_evaluate(learner, inner, params, batch)
    one = lambda i: {k: v[i:i + 1] for k, v in batch.items() if k != "noise"}  # noqa: E731
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 1, 2]):  # one task at a time, in sequences
        for i in order:
            assert torch.allclose(shard_evaluate(learner, inner, params, one(i))[1][0], together[1][i], rtol=1e-12)
    rev = shard_evaluate(learner, inner, params, {k: v.flip(0) for k, v in batch.items() if k != "noise"})
    assert torch.allclose(rev[1].flip(0), together[1], rtol=1e-12)
    # and a different task in the same batch changes nothing for the others
    other = {k: v.clone() for k, v in batch.items() if k != "noise"}
    other["x_support"][1] = torch.randn(other["x_support"][1].shape, generator=torch.Generator().manual_seed(5),
                                        dtype=torch.float64)
    changed = shard_evaluate(learner, inner, params, other)
    assert torch.allclose(changed[1][[0, 2]], together[1][[0, 2]], rtol=1e-12)
    assert not torch.allclose(changed[1][1], together[1][1])


@pytest.mark.slow
def test_gate_figure_is_written_and_tracked(tmp_path):
    cfg = load_config(None, {"method": "metalstm", "inner_steps": 3, "eval.inner_steps": 3, "iterations": 10,
                             "meta_batch_size": 4, "model.hidden": [16, 16], "eval.tasks": 20, "eval.shots": [10],
                             "train.log_every": 5, "backend": "local", "output_dir": str(tmp_path),
                             "tracking.log_model": False})
    from mlflow import MlflowClient

    from pipeline.tracking import MlflowTracker, resolve_uri

    uri = resolve_uri("", tmp_path)
    cfg.tracking.uri = uri
    with Trainer(cfg, tmp_path / "r", log=lambda m: None, hooks=(MlflowTracker(cfg, uri, run_name="r"),)) as t:
        results = t.train()
    assert "plots/gates.png" in results["plots"]
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("metatrain").experiment_id])
    assert "plots/gates.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}


@pytest.mark.slow
@needs_omniglot
def test_short_meta_training_on_real_omniglot_beats_the_untrained_learner(tmp_path):
    data = [str(OMNIGLOT / "images_background_small1.zip"), str(OMNIGLOT / "images_background_small2.zip")]
    cfg = load_config(None, {"method": "metalstm", "task.name": "omniglot", "task.data": data, "task.rotations": True,
                             "task.shots": 1, "task.query": 1, "eval.shots": [1], "task.split": "alphabet",
                             "task.train_alphabets": SMALL1_ALPHABETS, "task.test_alphabets": NEW_IN_SMALL2,
                             "inner_steps": 5, "eval.inner_steps": 5, "meta_batch_size": 8, "iterations": 150,
                             "beta": 0.003, "model.filters": 16, "eval.tasks": 200, "train.log_every": 50, "train.tasks_per_vmap": 0,
                             "backend": "local", "output_dir": str(tmp_path), "tracking.enabled": False,
                             "train.plots": False})
    with Trainer(cfg, tmp_path / "r", log=lambda m: None) as t:
        untrained = t.evaluate()["1"]
        results = t.train()
    acc = results["results"]["1"]
    print(untrained, acc)
    assert acc["mean"] - acc["ci95"] > untrained["mean"] + untrained["ci95"] and acc["mean"] > 0.4, (untrained, acc)


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
    from pipeline.learners import forward

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
    reference independent of pipeline.learners), the variance unbiased as PyTorch's running_var."""
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
    from pipeline.config import ConfigError, query_bn

    for method, want in (("metalstm", "support"), ("maml", "batch")):
        cfg = load_config("metalstm_omniglot_5w1s_cpu", overrides=[f"method={method}"], local=False)
        assert query_bn(cfg) == want
    cfg = load_config("metalstm_omniglot_5w1s_cpu", overrides=["eval.query_bn=batch"], local=False)
    assert query_bn(cfg) == "batch"
    with pytest.raises(ConfigError, match=r"^eval.query_bn: unknown choice 'running'; allowed: '', 'batch', 'support'$"):
        load_config("metalstm_omniglot_5w1s_cpu", overrides=["eval.query_bn=running"], local=False)
