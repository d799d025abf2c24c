"""train.meta_loss: heldout (Metz et al. 2019's validation meta-objective): each meta-training
optimizee's meta-loss term f_t is measured on data it never trains on, while the optimizer still
reads training gradients. References written here from the definitions: a quadratic's held-out
draw shares the optimum theta* = W^-1 y; an MNIST optimizee's held-out images are a per-optimizee
share of the training images, disjoint from its minibatches; the unroll's meta-loss is SGD's
trajectory scored on the held-out objective. The default (train) draws the same data as before."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ConfigError, load_config
from pipeline.driver import checkpoint
from pipeline.driver.families import make_source
from pipeline.driver.trainer import Trainer
from tasks.optimizees import MnistMLP, Quadratic
from tasks.sampling import sample_optimizees

from helpers import quad_cfg

MNIST_CSV = Path(__file__).resolve().parents[3] / "shared/data/mnist/mnist_5k.csv.gz"
needs_mnist = pytest.mark.skipif(not MNIST_CSV.is_file(), reason="../shared/data/mnist not found")


def draw(dist, split="train", indices=range(5), steps=6):
    return sample_optimizees(dist, seed=3, split=split, iteration=2, indices=indices, steps=steps, dtype=torch.float64)


def test_a_heldout_quadratic_shares_the_optimum_and_keeps_the_training_draw():
    plain, held = draw(Quadratic(6)), draw(Quadratic(6, heldout=True))
    for k in ("W", "y", "theta0"):
        assert torch.equal(plain[k], held[k])  # the held-out draw comes after the problem's own
    optimum = torch.linalg.solve(held["W"], held["y"])  # theta* = W^-1 y
    dist = Quadratic(6, heldout=True)
    assert dist.loss(optimum, held, 0).max() < 1e-18
    assert dist.meta_loss(optimum, held, 0).max() < 1e-18  # the same minimiser
    theta0 = held["theta0"]
    want = ((held["W_heldout"] @ theta0.unsqueeze(-1)).squeeze(-1) - held["y_heldout"]).pow(2).sum(-1)
    assert torch.equal(dist.meta_loss(theta0, held, 0), want)
    assert not torch.allclose(dist.meta_loss(theta0, held, 0), dist.loss(theta0, held, 0))
    assert "W_heldout" not in draw(dist, split="test") and "W_heldout" in draw(dist, split="val")


def test_an_sgd_unroll_scored_on_the_heldout_objective_against_a_hand_written_trajectory():
    """The unroll's summed meta-loss: theta_{t+1} = theta_t - alpha * grad ||W theta_t - y||^2 (the
    training objective), each term ||W' theta_t - y'||^2 (the held-out one), t = 1..unroll."""
    cfg = quad_cfg(None, **{"method": "sgd", "train.meta_loss": "heldout", "inner_steps": 8, "train.unroll": 4})
    source = make_source(cfg, dtype=torch.float64)
    first = source.train_shard({}, 0, range(3))  # unroll 1 of trajectory 0; unroll 2 continues from its carry
    result = source.train_shard({}, 1, range(3), carry=first.carry)
    problem = source.sample(split="train", seed=cfg.seed, iteration=0, indices=range(3), steps=cfg.inner_steps)
    W, y, Wh, yh = problem["W"], problem["y"], problem["W_heldout"], problem["y_heldout"]
    theta, meta = problem["theta0"], 0.0
    for t in range(1, 9):  # both unrolls, the second's terms summed
        grad = 2 * (W.transpose(-1, -2) @ ((W @ theta.unsqueeze(-1)).squeeze(-1) - y).unsqueeze(-1)).squeeze(-1)
        theta = theta - cfg.alpha * grad
        if t > 4:
            meta = meta + ((Wh @ theta.unsqueeze(-1)).squeeze(-1) - yh).pow(2).sum(-1)
    assert result.loss_sum == pytest.approx(float(meta.sum()), rel=1e-10)


def test_the_evaluations_unseen_curve_is_sgds_trajectory_scored_on_the_heldout_objective():
    """eval_shard's unseen-data curve: ||W' theta_t - y'||^2 at the steps unseen_steps(steps) of SGD's
    trajectory on the training objective (validation optimizees, which have the held-out draw); its
    last column is the loss after the last step. The steps are every 2nd of 40 (21 points)."""
    from tasks.optimizees import unseen_steps

    cfg = quad_cfg(None, **{"method": "sgd", "train.meta_loss": "heldout"})
    source = make_source(cfg, dtype=torch.float64)
    final, curve, unseen = source.eval_shard({}, range(3), optimizer="sgd", alpha=cfg.alpha, seed=5, split="val",
                                             steps=40)
    assert unseen_steps(40) == list(range(0, 41, 2)) and unseen.shape == (3, 21) and curve.shape == (3, 41)
    problem = source.sample(split="val", seed=5, iteration=0, indices=range(3), steps=40)
    W, y, Wh, yh = problem["W"], problem["y"], problem["W_heldout"], problem["y_heldout"]
    theta, want = problem["theta0"], []
    for t in range(41):
        if t % 2 == 0:
            want.append(((Wh @ theta.unsqueeze(-1)).squeeze(-1) - yh).pow(2).sum(-1))
        grad = 2 * (W.transpose(-1, -2) @ ((W @ theta.unsqueeze(-1)).squeeze(-1) - y).unsqueeze(-1)).squeeze(-1)
        theta = theta - cfg.alpha * grad
    torch.testing.assert_close(unseen, torch.stack(want, 1), rtol=1e-10, atol=0)
    assert len(source.eval_shard({}, range(3), optimizer="sgd", alpha=cfg.alpha, seed=5, split="test",
                                 steps=40)) == 2  # test quadratics have no held-out draw: no curve


@needs_mnist
def test_mnist_heldout_images_are_a_per_optimizee_share_never_in_its_minibatches():
    dist = MnistMLP(str(MNIST_CSV), [20], "relu", minibatch=64, heldout=True)
    plain = draw(MnistMLP(str(MNIST_CSV), [20], "relu", minibatch=64))
    held = draw(dist)
    assert torch.equal(plain["theta0"], held["theta0"])
    n = len(dist.images["train"][1])
    seen_heldout = []
    for b in range(5):
        train, out = set(held["batches"][b].flatten().tolist()), set(held["heldout_batches"][b].flatten().tolist())
        assert not train & out and max(train | out) < n  # disjoint, and all from the training images
        seen_heldout.append(out)
    assert max(len(s) for s in seen_heldout) <= int(n * MnistMLP.HELDOUT_FRACTION)
    assert len(set.union(*seen_heldout)) > 1.5 * max(len(s) for s in seen_heldout)  # each optimizee its own share
    # the meta-loss term: a hand-written MLP forward on the held-out minibatch of step 2
    theta = held["theta0"].clone() * 50
    x, y = dist.images["train"]
    idx = held["heldout_batches"][:, 2]
    w1, b1 = theta[:, :784 * 20].reshape(5, 784, 20), theta[:, 784 * 20:784 * 20 + 20]
    w2 = theta[:, 784 * 20 + 20:784 * 20 + 20 + 200].reshape(5, 20, 10)
    b2 = theta[:, -10:]
    want = []
    for b in range(5):
        xb = torch.as_tensor(x[idx[b].numpy()], dtype=torch.float64) / 255.0
        logits = torch.relu(xb @ w1[b] + b1[b]) @ w2[b] + b2[b]
        want.append(F.cross_entropy(logits, torch.as_tensor(y[idx[b].numpy()])))
    torch.testing.assert_close(dist.meta_loss(theta, held, 2), torch.stack(want), rtol=1e-12, atol=1e-12)
    assert "heldout_batches" not in draw(dist, split="test")
    # the unseen loss after training: every held-out image of the optimizee, none of the others
    own = held["heldout_images"]
    assert own.shape == (5, int(n * MnistMLP.HELDOUT_FRACTION))
    assert not set(own[0].tolist()) & set(held["batches"][0].flatten().tolist())
    xb = torch.as_tensor(x[own[0].numpy()], dtype=torch.float64) / 255.0
    logits = torch.relu(xb @ w1[0] + b1[0]) @ w2[0] + b2[0]
    torch.testing.assert_close(dist.unseen_loss(theta, held)[0], F.cross_entropy(logits, torch.as_tensor(
        y[own[0].numpy()])), rtol=1e-12, atol=1e-12)


def test_heldout_trains_resumes_mid_trajectory_bitwise_and_differs_from_train(tmp_path):
    cfg = quad_cfg(tmp_path, **{"train.meta_loss": "heldout"})
    straight = Trainer(cfg, tmp_path / "straight", log=lambda m: None)
    straight.train()

    class Crash(Exception):
        pass

    def crash_at(msg):
        if msg.startswith("[l2l] it") and msg.split("/")[0].endswith(" 9"):
            raise Crash

    mid = quad_cfg(tmp_path, **{"train.meta_loss": "heldout", "train.checkpoint_every": 4})
    with pytest.raises(Crash):
        Trainer(mid, tmp_path / "crashed", log=crash_at).train()
    assert checkpoint.load(tmp_path / "crashed")["iteration"] == 8  # inside a trajectory
    resumed = Trainer(mid, tmp_path / "crashed", log=lambda m: None)
    resumed.train(resume=True)
    for k in straight.params:
        assert torch.equal(straight.params[k], resumed.params[k]), k
    plain = Trainer(quad_cfg(tmp_path), tmp_path / "plain", log=lambda m: None)
    plain.train()
    assert any(not torch.equal(plain.params[k], straight.params[k]) for k in plain.params)
    assert math.isfinite(straight.evaluate()["l2l"]["mean"])


@needs_mnist
def test_optimizee_images_gives_each_training_optimizee_its_own_draw_and_the_rest_held_out():
    """task.optimizee_images N: a training optimizee's minibatches come from N images of its own,
    under heldout its held-out images are all the other training images; test optimizees keep the
    test pool's draw, and the default draws as before."""
    n = len(MnistMLP(str(MNIST_CSV), [10]).images["train"][1])
    held = draw(MnistMLP(str(MNIST_CSV), [10], minibatch=64, heldout=True, own_images=300), steps=20)
    plain_own = draw(MnistMLP(str(MNIST_CSV), [10], minibatch=64, own_images=300), steps=20)
    owned = []
    for b in range(5):
        train, out = set(held["batches"][b].flatten().tolist()), set(held["heldout_images"][b].tolist())
        assert len(train) <= 300 and len(out) == n - 300 and not train & out  # its own 300, the rest held out
        assert set(held["heldout_batches"][b].flatten().tolist()) <= out
        assert len(set(plain_own["batches"][b].flatten().tolist())) <= 300 and "heldout_images" not in plain_own
        owned.append(train)
    assert len(set.union(*owned)) > 600  # each optimizee its own images
    test = MnistMLP(str(MNIST_CSV), [10], minibatch=64, heldout=True, own_images=300)
    assert torch.equal(draw(test, split="test")["batches"], draw(MnistMLP(str(MNIST_CSV), [10], minibatch=64),
                                                                  split="test")["batches"])
    with pytest.raises(ConfigError, match=f"task.optimizee_images: must be below the {n} training images"):
        MnistMLP(str(MNIST_CSV), [10], own_images=n)
    with pytest.raises(ConfigError, match="task.optimizee_images: images each MNIST optimizee trains on"):
        load_config(None, {"method": "l2l", "task.name": "quadratic", "task.optimizee_images": 10})


@pytest.mark.parametrize("sets, message", [
    ({"train.meta_loss": "heldot"}, "train.meta_loss: unknown choice 'heldot'; did you mean 'heldout'? allowed: train, "
                                  "heldout"),
    ({"method": "maml", "train.meta_loss": "heldout"}, "train.meta_loss: where a learned optimizer's meta-loss is "
                                                        "measured (methods adam, l2l, nag, rmsprop, sgd); method maml "
                                                        "takes train"),
])
def test_bad_meta_loss_settings_are_one_line(sets, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, {"method": "l2l", "task.name": "quadratic", **sets} if "method" not in sets else sets)
    assert str(e.value) == message


def test_the_default_draws_no_heldout_data():
    problem = draw(make_source(quad_cfg(None)).distribution)
    assert set(problem) == {"W", "y", "theta0", "split"}
    assert np.isfinite(problem["W"].numpy()).all()


@needs_mnist
@pytest.mark.parametrize("make", [lambda: Quadratic(5, heldout=True),
                                  lambda: MnistMLP(str(MNIST_CSV), [10], "relu", 16, heldout=True)])
def test_heldout_data_drawn_on_the_device_are_the_numpy_draws(make):
    dist = make()
    kw = dict(seed=np.array([3, 4]), split="train", iteration=2, indices=[0, 9], steps=3)
    cpu, dev = sample_optimizees(dist, **kw), sample_optimizees(dist, **kw, device="cpu", on_device=True)
    assert {k for k in cpu if "heldout" in k}
    for k in cpu:
        if k != "split":  # float32 values from float64 draws: equal here (1 ulp allowed by tasks/sampling.py)
            torch.testing.assert_close(cpu[k], dev[k], rtol=2 ** -23, atol=0)


def test_validation_selects_by_the_heldout_loss_when_the_meta_loss_is_heldout():
    """train.validate_every under heldout scores the validation optimizees on their held-out
    objective after the horizon (plumbing: the same number as their evaluation's unseen column)."""
    from pipeline.distributed.backends import LocalBackend
    from pipeline.driver.evaluation import eval_ranges, table_row
    from pipeline.driver.families import family_of

    cfg = quad_cfg(None, **{"train.meta_loss": "heldout", "train.validate_tasks": 8})
    source = make_source(cfg)
    backend, params = LocalBackend(cfg, source), source.init_params()
    row, _ = table_row(backend, params, eval_ranges(8, cfg.eval.batch_size, 1), optimizer="l2l", alpha=cfg.alpha,
                       seed=cfg.seed, split="val", steps=cfg.inner_steps)
    score = family_of("l2l").validate(backend, params, cfg)
    assert score == row["unseen"]["mean"] and score != row["mean"]
    plain = quad_cfg(None, **{"train.validate_tasks": 8})
    assert family_of("l2l").validate(LocalBackend(plain, make_source(plain)), params, plain) != score


def test_a_heldout_sweep_reports_each_optimizers_loss_on_held_out_data(tmp_path):
    """Plumbing: a sweep directory written by hand, two baselines of a heldout config; the report's
    cells are their held-out (unseen) losses, task by task, not their training losses."""
    import json

    import pyarrow.parquet as pq
    import yaml

    from pipeline.sweeps.report import write_report
    from pipeline.yaml_dataclasses import to_dict

    base = to_dict(quad_cfg(None, **{"train.meta_loss": "heldout", "iterations": 0}))
    space = {"alpha": {"grid": [0.1, 0.01]}}
    sweep_dir = tmp_path / "s"
    (sweep_dir / "trials").mkdir(parents=True)
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump({"name": "s", "space": space, "base_config": base}))
    manifest, rng, want = {}, np.random.default_rng(0), {}
    for i, alpha in enumerate((0.1, 0.01)):
        name = f"0000{i}-alpha={alpha}"
        manifest[f"x_0000{i}"] = {"name": name, "status": "completed", "config": {"alpha": alpha}}
        train, held = rng.random(30), 5 + rng.random(30)
        want[alpha] = held.mean()
        run = sweep_dir / "trials" / name
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({**base, "alpha": alpha}))
        row = {"mean": train.mean(), "ci95": 0.1, "n": 30, "per_task": train.tolist(),
               "unseen": {"mean": held.mean(), "ci95": 0.1, "n": 30, "per_task": held.tolist()}}
        (run / "results.json").write_text(json.dumps({
            "status": "completed", "family": "optimizer", "method": "l2l", "metric": "final quadratic loss",
            "eval": {"inner_steps": 12}, "results": {"l2l": row}}))
    (sweep_dir / "trials.json").write_text(json.dumps(manifest))
    report = write_report(sweep_dir)
    cells = {r["alpha"]: r["mean"] for r in pq.read_table(sweep_dir / "report.parquet").to_pylist()}
    assert cells == pytest.approx(want, rel=1e-12)
    assert "## Final quadratic loss on held-out data" in report.text and "12 steps" in report.text
