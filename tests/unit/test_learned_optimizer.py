"""Learned optimizers (Andrychowicz et al. 2016): the LSTM optimizer and its meta-gradient against an
independent reference (torch.nn.LSTMCell, the paper's formulas written out here), the baselines
against torch.optim, truncation, validation, the MNIST loader against a hand-decoded CSV row and bad
input (learning, resume, worker-count invariance and sweeps: tests/integration)."""
import csv
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.core.rules import get_rule
from pipeline.driver import checkpoint
from pipeline.driver.families import make_source
from pipeline.driver.trainer import Trainer
from pipeline.shards.optimizer_experiment import run_steps

from helpers import quad_cfg

MNIST_CSV = Path(__file__).resolve().parents[3] / "shared/data/mnist/mnist_5k.csv.gz"
needs_mnist = pytest.mark.skipif(not MNIST_CSV.is_file(), reason="../shared/data/mnist not found")


# -- an independent reference of the paper's optimizer ----------------------------------------------
def ref_preprocess(x, p=10.0):
    """Appendix A of the paper: (log|x| / p, sgn x) if |x| >= e^-p, else (-1, e^p x)."""
    out = torch.empty(*x.shape, 2, dtype=x.dtype)
    flat, o = x.reshape(-1), out.reshape(-1, 2)
    for i, v in enumerate(flat.tolist()):
        if abs(v) >= math.exp(-p):
            o[i, 0], o[i, 1] = math.log(abs(v)) / p, math.copysign(1.0, v)
        else:
            o[i, 0], o[i, 1] = -1.0, math.exp(p) * v
    return out


class RefOptimizer(torch.nn.Module):
    """Two torch.nn.LSTMCell layers of 20 units and a linear output, loaded with phi."""

    def __init__(self, phi):
        super().__init__()
        self.cells = torch.nn.ModuleList([torch.nn.LSTMCell(2, 20), torch.nn.LSTMCell(20, 20)]).double()
        self.out = torch.nn.Linear(20, 1).double()
        with torch.no_grad():
            for i, cell in enumerate(self.cells):
                cell.weight_ih.copy_(phi[f"l2l.W_ih{i}"])
                cell.weight_hh.copy_(phi[f"l2l.W_hh{i}"])
                cell.bias_ih.copy_(phi[f"l2l.b{i}"])
                cell.bias_hh.zero_()
            self.out.weight.copy_(phi["l2l.W_out"])
            self.out.bias.copy_(phi["l2l.b_out"])

    def forward(self, g, state):
        x, new = ref_preprocess(g.reshape(-1)), []
        for cell, (h, c) in zip(self.cells, state):
            h, c = cell(x, (h, c))
            new.append((h, c))
            x = h
        return self.out(x).reshape(g.shape), new


def ref_quadratic_unroll(model, W, y, theta, state, steps, alpha):
    """Sum over the unroll of f(theta_t) = ||W theta_t - y||^2, gradients as constants (first order)."""
    meta = 0.0
    for _ in range(steps):
        g = (2 * (W.transpose(-1, -2) @ ((W @ theta.unsqueeze(-1)).squeeze(-1) - y).unsqueeze(-1)).squeeze(-1)).detach()
        step, state = model(g, state)
        theta = theta + alpha * step
        meta = meta + ((W @ theta.unsqueeze(-1)).squeeze(-1) - y).pow(2).sum(-1)
    return meta, theta, state


def test_meta_gradient_matches_the_papers_formula_over_two_truncated_unrolls():
    cfg = quad_cfg(meta_batch_size=3, inner_steps=8, **{"train.unroll": 4})
    exp = make_source(cfg, dtype=torch.float64)
    phi = exp.init_params()
    first = exp.train_shard(phi, 0, range(3))
    second = exp.train_shard(phi, 1, range(3), first.carry)
    problem = exp.sample(split="train", seed=cfg.seed, iteration=0, indices=range(3), steps=8)
    W, y, theta0 = problem["W"], problem["y"], problem["theta0"]

    model = RefOptimizer(phi)
    zeros = lambda: torch.zeros(3 * 10, 20, dtype=torch.float64)  # noqa: E731
    state = [(zeros(), zeros()), (zeros(), zeros())]
    meta1, theta, state = ref_quadratic_unroll(model, W, y, theta0, state, 4, cfg.alpha)
    g1 = torch.autograd.grad(meta1.sum(), list(model.parameters()), retain_graph=True)
    # truncation: the second unroll starts from the first one's state as constants
    state_cut = [(h.detach(), c.detach()) for h, c in state]
    meta2, _, _ = ref_quadratic_unroll(model, W, y, theta.detach(), state_cut, 4, cfg.alpha)
    g2 = torch.autograd.grad(meta2.sum(), list(model.parameters()))
    # untruncated, the second unroll's gradient would differ (theta_4 depends on phi)
    meta2_full, _, _ = ref_quadratic_unroll(model, W, y, theta, state, 4, cfg.alpha)
    g2_full = torch.autograd.grad(meta2_full.sum(), list(model.parameters()))

    def ours(result):
        g = result.grads
        return [g["l2l.W_ih0"], g["l2l.W_hh0"], g["l2l.b0"], g["l2l.b0"], g["l2l.W_ih1"], g["l2l.W_hh1"], g["l2l.b1"],
                g["l2l.b1"], g["l2l.W_out"], g["l2l.b_out"]]

    names = [n for n, _ in model.named_parameters()]
    assert first.loss_sum == pytest.approx(meta1.sum().item(), rel=1e-10)
    assert second.loss_sum == pytest.approx(meta2.sum().item(), rel=1e-10)
    for name, a, b in zip(names, ours(first), g1):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, msg=name)
    for name, a, b in zip(names, ours(second), g2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, msg=name)
    assert max((a - b).abs().max().item() for a, b in zip(ours(second), g2_full)) > 1e-6
    # the carry handed to the next unroll holds no graph: nothing before the cut gets a gradient
    assert not any(v.requires_grad for v in first.carry.values())
    # every weight of the LSTM gets a meta-gradient
    assert all(v.abs().sum() > 0 for v in first.grads.values())


def test_preprocessing_at_and_around_e_to_the_minus_p():
    from pipeline.core.rules.meta_lstm import preprocess

    e = math.exp(-10.0)
    x = torch.tensor([e * 1.0001, e * 0.9999, -e * 1.0001, -e * 0.9999, 0.0, 3.0, -0.5], dtype=torch.float64)
    torch.testing.assert_close(preprocess(x, 10.0), ref_preprocess(x, 10.0), rtol=1e-12, atol=1e-12)
    # continuous in its first feature at the threshold, the sign switching to the scaled value
    out = preprocess(x, 10.0)
    assert out[0, 0] == pytest.approx(-1.0, abs=1e-4) and out[1, 1] == pytest.approx(0.9999, rel=1e-9)


def test_output_forced_to_minus_grad_reproduces_sgd_exactly(monkeypatch):
    cfg = quad_cfg(meta_batch_size=4)
    exp = make_source(cfg, dtype=torch.float64)
    phi = exp.init_params()
    rule = get_rule("l2l")
    monkeypatch.setattr(rule, "direction", lambda g, params, carry: (-g, carry))
    problem = exp.sample(split="test", seed=0, iteration=0, indices=range(4), steps=12)
    runs = {}
    for name in ("l2l", "sgd"):
        r = get_rule(name)
        theta = problem["theta0"]
        runs[name] = run_steps(r, phi, exp.distribution, problem, theta, r.init_carry(phi, {"theta": theta}),
                               start=0, steps=12, alpha=0.01)
    for a, b in zip(runs["l2l"][0], runs["sgd"][0]):
        assert torch.equal(a, b)
    assert torch.equal(runs["l2l"][1], runs["sgd"][1])
    # and SGD is SGD: theta_1 = theta_0 - lr * 2 W^T (W theta_0 - y)
    W, y, t0 = problem["W"], problem["y"], problem["theta0"]
    g0 = 2 * torch.einsum("bji,bj->bi", W, torch.einsum("bij,bj->bi", W, t0) - y)
    theta1 = t0 - 0.01 * g0
    torch.testing.assert_close(runs["sgd"][0][0], ((torch.einsum("bij,bj->bi", W, theta1) - y) ** 2).sum(-1))


@pytest.mark.parametrize("name,make", [
    ("sgd", lambda p, lr: torch.optim.SGD([p], lr=lr)),
    ("nag", lambda p, lr: torch.optim.SGD([p], lr=lr, momentum=0.9, nesterov=True)),
    ("rmsprop", lambda p, lr: torch.optim.RMSprop([p], lr=lr)),
    ("adam", lambda p, lr: torch.optim.Adam([p], lr=lr)),
])
def test_baselines_follow_torch_optim(name, make):
    cfg = quad_cfg(method=name, iterations=0)
    exp = make_source(cfg, dtype=torch.float64)
    problem = exp.sample(split="test", seed=1, iteration=0, indices=range(3), steps=15)
    rule = get_rule(name)
    theta0 = problem["theta0"]
    losses, theta, _ = run_steps(rule, {}, exp.distribution, problem, theta0, rule.init_carry({}, {"theta": theta0}),
                                 start=0, steps=15, alpha=0.02)
    p = theta0.clone().requires_grad_(True)
    opt = make(p, 0.02)
    for t in range(15):
        opt.zero_grad()
        exp.distribution.loss(p, problem, t).sum().backward()
        opt.step()
    torch.testing.assert_close(theta, p.detach(), rtol=1e-10, atol=1e-12)
    assert losses[-1].mean() < exp.distribution.loss(theta0, problem, 0).mean()


def test_validation_keeps_the_best_parameters_and_the_run_is_evaluated_with_them(tmp_path):
    """train.validate_every (the reference code's best checkpoint): the selected parameters are those of
    the lowest validation loss, the test table is computed with them, and a crash and resume keep the
    same choice. The recomputed validation and test losses go through the same eval_shard as the run:
    they check plumbing (which parameters, which optimizees), not the evaluation itself."""
    cfg = quad_cfg(tmp_path, beta=0.1, iterations=24, **{"train.validate_every": 3, "train.validate_tasks": 8})
    lines = []
    with Trainer(cfg, tmp_path / "run", log=lines.append) as trainer:
        results = trainer.train()
    history = results["validation"]["history"]
    assert [i for i, _ in history] == list(range(3, 25, 3))
    best = min(history, key=lambda h: h[1])
    chosen = results["validation"]["selected_iteration"]
    assert chosen == best[0] and chosen != 24  # this seed's last parameters are not the best: selection matters
    assert sum(line.startswith("[l2l] validation at it") for line in lines) == len(history)
    assert (tmp_path / "run" / "plots" / "learning_curves.png").is_file()  # with the validation scores
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [[e["iteration"], e["validation_loss"]] for e in logged if "validation_loss" in e] == history
    state = checkpoint.load(tmp_path / "run")
    selected = state["selected"]["params"]
    exp = make_source(cfg)
    val = exp.eval_shard(selected, range(8), optimizer="l2l", alpha=0.1, seed=cfg.seed, split="val", steps=12)[0]
    assert val.mean().item() == pytest.approx(best[1], rel=1e-6)
    test_kw = dict(optimizer="l2l", alpha=0.1, seed=cfg.eval.seed, split="test", steps=12)
    with_selected = exp.eval_shard(selected, range(30), **test_kw)[0].mean().item()
    with_last = exp.eval_shard(state["params"], range(30), **test_kw)[0].mean().item()
    assert results["results"]["l2l"]["mean"] == pytest.approx(with_selected, rel=1e-6)
    assert abs(with_selected - with_last) > 1e-3 * with_last
    # the validation optimizees are neither training nor test optimizees
    W = {s: exp.sample(split=s, seed=0, iteration=0, indices=range(1), steps=1)["W"] for s in ("train", "val", "test")}
    assert not torch.equal(W["val"], W["train"]) and not torch.equal(W["val"], W["test"])

    class Crash(Exception):
        pass

    def crash_at(msg):
        if msg.startswith("[l2l] it") and msg.split("/")[0].endswith(" 15"):
            raise Crash

    with pytest.raises(Crash):
        Trainer(cfg, tmp_path / "crashed", log=crash_at).train()
    resumed = Trainer(cfg, tmp_path / "crashed", log=lambda m: None)
    again = resumed.train(resume=True)
    assert (again["validation"]["history"] == history
            and again["results"]["l2l"]["mean"] == results["results"]["l2l"]["mean"])


def test_unrolls_and_evaluations_flush_subnormal_floats_and_restore_the_default(tmp_path):
    """Subnormal floats cost a trained MNIST optimizer 1.8x per unroll: the optimizer family's shard
    functions flush them to zero while they run, and leave PyTorch's default behind them."""
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # subnormal in float32
    exp = make_source(quad_cfg(tmp_path))
    seen, loss = [], exp.distribution.loss

    def recording_loss(theta, problem, t):
        seen.append((tiny * 1.0).item() == 0.0)
        return loss(theta, problem, t)

    exp.distribution.loss = recording_loss
    exp.train_shard(exp.init_params(), 0, range(2))
    exp.eval_shard(exp.init_params(), range(2), optimizer="l2l", alpha=0.1, seed=0, split="test", steps=3)
    assert seen and all(seen)
    assert (tiny * 1.0).item() != 0.0


@needs_mnist
def test_mnist_loader_against_a_hand_decoded_row():
    from tasks.optimizees import load_mnist

    with gzip.open(MNIST_CSV, "rt") as f:
        rows = [r for _, r in zip(range(10), csv.reader(f))]
    x_train, y_train = load_mnist(str(MNIST_CSV), "train")
    x_test, y_test = load_mnist(str(MNIST_CSV), "test")
    assert x_train.shape == (4000, 784) and x_test.shape == (1000, 784)
    # rows 0-3 are training images 0-3, row 4 is held-out image 0, row 5 is training image 4
    for i, row in enumerate(rows[:10]):
        pixels, label = np.array([int(v) for v in row[:784]]), int(row[784])
        x, y, j = (x_test, y_test, i // 5) if i % 5 == 4 else (x_train, y_train, i - (i + 1) // 5)
        assert np.array_equal(x[j], pixels) and y[j] == label
    assert np.bincount(y_test, minlength=10).min() > 50  # every digit held out


@needs_mnist
def test_mnist_optimizee_gradient_and_loss():
    cfg = load_config(None, {"method": "l2l", "task.name": "mnist_mlp", "task.data": [str(MNIST_CSV)],
                             "model.hidden": [20], "inner_steps": 4, "train.unroll": 2, "meta_batch_size": 2,
                             "tracking.enabled": False})
    exp = make_source(cfg, dtype=torch.float64)
    assert exp.distribution.dim == 784 * 20 + 20 + 20 * 10 + 10
    problem = exp.sample(split="train", seed=0, iteration=0, indices=range(2), steps=4)
    theta = problem["theta0"]
    loss = exp.distribution.loss(theta, problem, 0)
    assert loss.shape == (2,) and torch.allclose(loss, torch.full((2,), math.log(10), dtype=torch.float64), atol=0.05)
    # the per-optimizee loss against a plain torch.nn forward of the same weights and minibatch
    x, y = exp.distribution.images["train"]
    idx = problem["batches"][1, 0].numpy()
    W1, b1, W2, b2 = exp.distribution.unflatten(theta[1])
    logits = torch.sigmoid(torch.as_tensor(x[idx], dtype=torch.float64) / 255 @ W1 + b1) @ W2 + b2
    ref = torch.nn.functional.cross_entropy(logits, torch.as_tensor(y[idx]))
    assert exp.distribution.loss(theta, problem, 0)[1].item() == pytest.approx(ref.item(), rel=1e-10)
    result = exp.train_shard(exp.init_params(), 0, range(2))
    assert all(v.abs().sum() > 0 for v in result.grads.values())


@needs_mnist
def test_mnist_scores_every_digit_and_test_optimizees_also_on_images_they_never_saw():
    """final_loss: 100 images of each digit of the pool the optimizee trains on (the CSV is sorted by
    label); unseen_loss: for test optimizees, 100 of each digit of the training images. Both against
    a plain torch forward over images picked by a loop written here."""
    cfg = load_config(None, {"method": "sgd", "alpha": 1.0, "task.name": "mnist_mlp", "task.data": [str(MNIST_CSV)],
                             "model.hidden": [20], "inner_steps": 3, "train.unroll": 3, "iterations": 0,
                             "tracking.enabled": False})
    exp = make_source(cfg, dtype=torch.float64)
    dist = exp.distribution

    def reference(theta, pool):
        x, y = dist.images[pool]
        seen, picked = {}, []
        for i, label in enumerate(y.tolist()):
            if seen.get(label, 0) < 100:
                seen[label] = seen.get(label, 0) + 1
                picked.append(i)
        assert sorted(seen.values()) == [100] * 10
        W1, b1, W2, b2 = dist.unflatten(theta)
        logits = torch.sigmoid(torch.as_tensor(x[picked], dtype=torch.float64) / 255 @ W1 + b1) @ W2 + b2
        return torch.nn.functional.cross_entropy(logits, torch.as_tensor(y[picked])).item()

    final, curve, unseen = exp.eval_shard({}, range(2), optimizer="sgd", alpha=1.0, seed=5, split="test", steps=3)
    assert final.shape == (2,) and curve.shape == unseen.shape == (2, 4)  # unseen: at steps 0..3, the last after
    # the scored losses are of the optimizees after their last step: recompute that theta
    problem = exp.sample(split="test", seed=5, iteration=0, indices=range(2), steps=3)
    theta = problem["theta0"].clone().requires_grad_(True)
    for t in range(3):
        g, = torch.autograd.grad(dist.loss(theta, problem, t).sum(), theta)
        theta = (theta - 1.0 * g).detach().requires_grad_(True)
    for b in range(2):
        assert final[b].item() == pytest.approx(reference(theta[b].detach(), "test"), rel=1e-9)
        assert unseen[b, -1].item() == pytest.approx(reference(theta[b].detach(), "train"), rel=1e-9)
        assert unseen[b, 0].item() == pytest.approx(reference(problem["theta0"][b], "train"), rel=1e-9)
    # validation and training optimizees have no unseen images (the test images stay untouched)
    assert len(exp.eval_shard({}, range(1), optimizer="sgd", alpha=1.0, seed=5, split="val", steps=1)) == 2


@pytest.mark.parametrize("sets,message", [
    (["train.unroll=200"], "train.unroll: must divide the horizon inner_steps=100 (and so be at most it), got 200"),
    (["task.name=cubic"], "task.name: unknown task 'cubic'"),
    (["task.name=sinusoid"], "task.name: method l2l optimizes optimizees; allowed: quadratic, mnist_mlp"),
    (["method=maml"], "method: task quadratic is an optimizee distribution"),
    (["eval.baselines={adagrad: 0.1}"], "eval.baselines: unknown optimizer 'adagrad'"),
    (["eval.baselines={sgd: -1}"], "eval.baselines.sgd: the learning rate must be a finite number > 0"),
    (["task.name=mnist_mlp", "task.data=[/nonexistent/mnist.csv.gz]"],
     "task.data: /nonexistent/mnist.csv.gz does not exist"),
    (["task.name=mnist_mlp"], "task.data: mnist_mlp needs one location: the MNIST CSV"),
    (["model.optimizee_activation=tanh"], "model.optimizee_activation: unknown choice 'tanh'"),
    (["eval.split=val"], "eval.split: unknown split 'val'"),
    (["train.validate_every=-1"], "train.validate_every / train.validate_tasks: must be >= 0 (0 = off) / >= 1"),
    (["method=maml", "task.name=sinusoid", "train.validate_every=50"],
     "train.validate_every: selects a learned optimizer's parameters"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, sets, message):
    args = ["train", "l2l_quadratic_cpu", "--local", "--set", f"output_dir={tmp_path}"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())


def test_a_garbage_mnist_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "mnist.csv"
    bad.write_text("1,2,3\n4,5,6\n")
    assert main(["train", "l2l_mnist_cpu", "--local", "--set", f"task.data=[{bad}]",
                 "--set", f"output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert f"task.data: {bad} must have 785 columns" in err and err.count("\n") == 1


def test_baseline_without_meta_parameters_evaluates_on_the_requested_split(tmp_path):
    cfg = quad_cfg(tmp_path, method="adam", alpha=0.05, iterations=0, **{"eval.split": "train"})
    with Trainer(cfg, tmp_path / "adam", log=lambda m: None) as trainer:
        results = trainer.train()
    r = json.loads((tmp_path / "adam" / "results.json").read_text())
    assert r["eval"]["split"] == "train" and list(r["results"]) == ["adam"] and results["status"] == "completed"
    assert r["results"]["adam"]["mean"] < r["results"]["adam"]["before_adaptation"]
    # the training split's optimizees are not the test split's
    exp = trainer.experiment
    a = exp.sample(split="train", seed=0, iteration=0, indices=range(1), steps=1)["W"]
    b = exp.sample(split="test", seed=0, iteration=0, indices=range(1), steps=1)["W"]
    assert not torch.equal(a, b)


def test_a_torchvision_mnist_root_is_read_as_the_full_set(tmp_path):
    """A torchvision MNIST root (idx files under MNIST/raw, as torchvision's downloader leaves them)
    written here from a few known images: training optimizees see its train set, test its t10k set."""
    import struct

    from tasks.optimizees import load_mnist

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sets = {}
    for prefix, n in (("train", 7), ("t10k", 3)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
        sets[prefix] = (images.reshape(n, 784), labels)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = load_mnist(str(tmp_path), split)
        assert np.array_equal(x, sets[prefix][0]) and np.array_equal(y, sets[prefix][1].astype(np.int64))
    with pytest.raises(Exception, match="neither an MNIST CSV file nor a torchvision MNIST root"):
        load_mnist(str(tmp_path / "empty"), "train")
