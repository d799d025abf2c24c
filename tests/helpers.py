"""Plain helpers for tests/unit and tests/integration (pytest.ini puts tests/ on sys.path):
small learners and task batches for the algebra checks, where the real Omniglot data is, and the
helpers that both halves of a test module split across the two folders use. Fixtures and hooks
are in conftest.py."""
import contextlib
import errno
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import load_config
from pipeline.core.learners import conv4, loss_and_metric, mlp, pre_activation
from pipeline.core.meta_batch import InnerSettings, Learner, inner_adapt, shard_meta_gradient
from pipeline.core.reference import loop_meta_gradient, task_slice
from pipeline.core.rules import get_rule
from pipeline.shards.experiment import Experiment
from tasks.regression import Sinusoid
from tasks.sampling import sample_batch

ROOT = Path(__file__).resolve().parent.parent  # the repository


# -- the real data and learners for the algebra checks -------------------------------------------
def _omniglot_root() -> Path | None:
    """The real partial Omniglot (DESIGN section 3): $METATRAIN_OMNIGLOT, else ../shared/data/omniglot."""
    for c in (os.environ.get("METATRAIN_OMNIGLOT"), ROOT.parent / "shared/data/omniglot"):
        if c and (Path(c) / "images_background_small1.zip").is_file():
            return Path(c)
    return None


OMNIGLOT = _omniglot_root()
needs_omniglot = pytest.mark.skipif(OMNIGLOT is None, reason="real Omniglot data not found: set METATRAIN_OMNIGLOT")
SMALL1_ALPHABETS = ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
NEW_IN_SMALL2 = ["Japanese_(katakana)", "Sanskrit", "Tagalog"]

ALL_METHODS = ("maml", "fomaml", "metasgd", "tnet", "mnet", "mnet_full", "mtnet", "mtnet_full", "mc1", "mc2",
               "metalstm")


def make_learner(method, hidden=(40, 40), init_std=0.01):
    return Learner(mlp(1, list(hidden), 1, init_std), get_rule(method))


def sine_batch(learner, params, n=4, shots=10, seed=0, iteration=0, dtype=torch.float64):
    return sample_batch(Sinusoid(), seed=seed, split="train", iteration=iteration, indices=range(n), shots=shots,
                        query=10, noise_shapes=learner.rule.noise_shapes(params), dtype=dtype)


class ImageTasks:
    """Random N-way K-shot image tasks, only for checking algebra on conv cells."""

    def __init__(self, ways=3, size=8):
        self.ways, self.size = ways, size

    def sample(self, streams, shots, query, split="train"):
        n_s, n_q = self.ways * shots, self.ways * query
        return {"x_support": streams.normal((n_s, 1, self.size, self.size)),
                "y_support": streams.permutation(n_s) % self.ways,
                "x_query": streams.normal((n_q, 1, self.size, self.size)),
                "y_query": streams.permutation(n_q) % self.ways}


def conv_learner(method, filters=4, size=8, ways=3, strided=True):
    return Learner(conv4(1, ways, size, filters=filters, strided=strided), get_rule(method))


def conv_batch(learner, params, n=3, ways=3, size=8, dtype=torch.float64):
    return sample_batch(ImageTasks(ways, size), seed=1, split="train", iteration=0, indices=range(n), shots=2,
                        query=2, noise_shapes=learner.rule.noise_shapes(params), dtype=dtype)


def perturbed_params(learner, seed=0, dtype=torch.float64, scale=0.1):
    """Initial params with every meta-only tensor moved off its identity/zero init, so algebra
    tests exercise non-trivial T, zeta, step sizes and curvature matrices."""
    params = learner.init_params(seed, dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    for k, v in params.items():
        role = k.rsplit(".", 1)[1]
        if role not in ("W", "b"):
            noise = torch.randn(v.shape, generator=gen, dtype=dtype)
            params[k] = v + (2.0 * noise if role.endswith("zeta") else scale * noise)
    return params


# -- test_batched (unit and integration) -----------------------------------------------------------
def assert_same(batched, loop_losses, loop_grads, n):
    assert batched.n_tasks == n
    assert batched.loss_sum == pytest.approx(loop_losses.sum().item(), rel=1e-10)
    assert set(batched.grads) == set(loop_grads)
    for k, g in loop_grads.items():
        torch.testing.assert_close(batched.grads[k], g, rtol=1e-8, atol=1e-10, msg=lambda m: f"{k}: {m}")


# -- test_checkpoints (unit and integration) -------------------------------------------------------
def damage(path, how):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"\x00garbage" * 64)


# -- test_gradients (unit and integration) ---------------------------------------------------------
def summed_query_loss(learner, inner, params, batch) -> float:
    return shard_meta_gradient(learner, inner, params, batch).loss_sum


def directional_fd(learner, inner, params, batch, direction, eps=1e-6) -> float:
    plus = {k: v + eps * direction[k] for k, v in params.items()}
    minus = {k: v - eps * direction[k] for k, v in params.items()}
    return (summed_query_loss(learner, inner, plus, batch)
            - summed_query_loss(learner, inner, minus, batch)) / (2 * eps)


def random_direction(params, seed, skip=("zeta",)):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.zeros_like(v) if k.endswith(skip) else torch.randn(v.shape, generator=gen, dtype=v.dtype)
            for k, v in params.items()}


# -- test_images (unit and integration) and integration/test_distributed ---------------------------
def write_mini_folder(root, classes_per_split=(("train", 3), ("val", 1), ("test", 2)), per_class=6):
    """A tiny miniImageNet-shaped folder: <root>/<wnid>/<file>.jpg and train/val/test.csv."""
    rng = np.random.default_rng(0)
    n = 0
    for split, count in classes_per_split:
        rows = ["filename,label"]
        for _ in range(count):
            wnid = f"n{n:08d}"
            (root / wnid).mkdir(parents=True)
            colour = rng.integers(0, 256, 3)
            for j in range(per_class):
                pixels = np.clip(colour + rng.integers(-20, 20, (90, 100, 3)), 0, 255).astype(np.uint8)
                name = f"{wnid}{j:08d}.jpg"
                Image.fromarray(pixels).save(root / wnid / name, quality=95)
                rows.append(f"{name},{wnid}")
            n += 1
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


# -- test_jobs (unit and integration) --------------------------------------------------------------
def free_ports(n):
    from pipeline.serve.model_server import free_ports

    return free_ports(n)


# -- test_learned_optimizer (unit and integration) -------------------------------------------------
def quad_cfg(tmp_path=None, **over):
    sets = {"method": "l2l", "task.name": "quadratic", "inner_steps": 12, "train.unroll": 4, "iterations": 12,
            "meta_batch_size": 6, "alpha": 0.1, "beta": 0.01, "backend": "local", "tracking.enabled": False,
            "eval.tasks": 30, "eval.inner_steps": 12, "train.log_every": 3, "train.checkpoint_every": 3,
            "output_dir": str(tmp_path or "runs")}
    sets.update(over)
    return load_config(None, sets)


# -- test_meta_lstm (unit and integration) ---------------------------------------------------------
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


# -- test_population (unit and integration) --------------------------------------------------------
BASE = {"meta_batch_size": 4, "model.hidden": [20, 20], "eval.tasks": 20, "eval.shots": [10],
        "tracking.enabled": False, "backend": "local", "train.log_every": 50, "train.compile": "never",
        "train.plots": False}
MEMBERS = [{"alpha": 0.01, "beta": 0.001, "seed": 0}, {"alpha": 0.05, "beta": 0.003, "seed": 1},
           {"alpha": 0.02, "beta": 0.002, "seed": 0, "gumbel_temperature": 0.5, "eval.seed": 3}]


def configs(tmp_path, method, members=MEMBERS, **over):
    return [load_config("sine_quick", {**BASE, "method": method, "output_dir": str(tmp_path), **over, **m,
                                       "run_name": f"m{i}"}) for i, m in enumerate(members)]


# -- test_reductions (unit and integration) --------------------------------------------------------
WB = ("W", "b")


def adapted(learner, inner, params, batch):
    return [inner_adapt(learner, inner, params, task_slice(batch, i))[0] for i in range(batch["x_support"].shape[0])]


def assert_reduces(reduced, reference, inner, batch, params_reduced, params_reference, keys_equal=WB, exact=False):
    near = dict(rtol=1e-12, atol=1e-14)
    for fa, fb in zip(adapted(reduced, inner, params_reduced, batch),
                      adapted(reference, inner, params_reference, batch)):
        assert fa.keys() == fb.keys()
        for k in fa:
            torch.testing.assert_close(fa[k], fb[k], **(dict(rtol=0, atol=0) if exact else near))
    ga = shard_meta_gradient(reduced, inner, params_reduced, batch)
    gb = shard_meta_gradient(reference, inner, params_reference, batch)
    assert ga.loss_sum == pytest.approx(gb.loss_sum, rel=1e-12)
    for k in params_reference:
        if k.rsplit(".", 1)[1] in keys_equal:
            # Meta-gradients of the two graphs go through differently shaped backward kernels,
            # whose float64 summation order depends on the CPU (bit-equal on some, a few ulp apart
            # on others, e.g. AMD EPYC): equal to 1e-12 relative.
            torch.testing.assert_close(ga.grads[k], gb.grads[k], **near)
    return ga, gb


# -- a run's evaluation tasks as a user's files (the adaptation and serving tests) --------------
def eval_task(run_dir, shots, index=0):
    """Test task `index` of the run's in-run evaluation (eval.seed), as the evaluation samples it."""
    cfg = load_config(run_dir / "config.yaml")
    exp = Experiment(cfg)
    params = exp.learner.init_params(0)
    batch = exp.sample(params, split="test", seed=cfg.eval.seed, iteration=0, indices=[index], shots=shots)
    return {k: v[0] for k, v in batch.items() if k != "noise"}


def save_grey(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def episode_files(tmp_path, run_dir, shots=1):
    """Eval task 0 of the run written as files (raw Omniglot convention: dark strokes, so un-inverted)."""
    task = eval_task(run_dir, shots)
    names = ["cat", "dog", "emu"]
    for i, (x, y) in enumerate(zip(task["x_support"], task["y_support"])):
        save_grey(tmp_path / "support" / names[y] / f"{i}.png", (255 - np.rint(x[0].numpy() * 255)).astype(np.uint8))
    for i, x in enumerate(task["x_query"]):
        save_grey(tmp_path / "query" / f"q{i}.png", (255 - np.rint(x[0].numpy() * 255)).astype(np.uint8))
    return task, names


# -- the bodies of tests that run in both folders (cheap parameters in unit/, costly ones in integration/) --
def check_batched_matches_per_task_loop_mlp(method, steps):
    learner = make_learner(method, hidden=(16, 16), init_std=0.3)
    params = perturbed_params(learner)
    batch = sine_batch(learner, params, n=5)
    inner = InnerSettings(alpha=0.05, steps=steps, temperature=0.7)
    losses, grads = loop_meta_gradient(learner, inner, params, batch)
    assert_same(shard_meta_gradient(learner, inner, params, batch), losses, grads, 5)
    # Gradients are not all zero (the comparison is not vacuous).
    assert sum(g.abs().sum() for g in grads.values()) > 0


def check_maml_meta_gradient_matches_finite_differences(steps):
    learner = make_learner("maml", hidden=(20, 20), init_std=0.5)
    params = learner.init_params(0, torch.float64)
    batch = sine_batch(learner, params, n=4)
    inner = InnerSettings(alpha=0.1, steps=steps)
    grads = shard_meta_gradient(learner, inner, params, batch).grads
    for seed in range(4):
        d = random_direction(params, seed)
        analytic = sum((grads[k] * d[k]).sum() for k in params).item()
        assert analytic == pytest.approx(directional_fd(learner, inner, params, batch, d), rel=1e-5)
    # A few individual coordinates as well.
    for key, idx in [("l0.W", (3, 0)), ("l1.W", (5, 7)), ("l2.b", (0,)), ("l1.b", (11,))]:
        d = {k: torch.zeros_like(v) for k, v in params.items()}
        d[key][idx] = 1.0
        assert grads[key][idx].item() == pytest.approx(directional_fd(learner, inner, params, batch, d),
                                                       rel=1e-5, abs=1e-9)


def check_forced_gates_give_sgd_with_step_alpha(conv):
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


def check_c0_and_every_meta_learner_weight_receive_gradients(conv):
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


def check_tnet_with_identity_T_is_maml(steps):
    maml, tnet = make_learner("maml", init_std=0.3), make_learner("tnet", init_std=0.3)
    p_maml = maml.init_params(0, torch.float64)
    p_tnet = tnet.init_params(0, torch.float64)  # same seed: same W, b; T = I
    assert all(torch.equal(p_tnet[f"{c.name}.T"], torch.eye(c.fan_out, dtype=torch.float64)) for c in tnet.net.cells)
    batch = sine_batch(maml, p_maml, n=5)
    g_tnet, _ = assert_reduces(tnet, maml, InnerSettings(0.1, steps), batch, p_tnet, p_maml, exact=True)
    assert any(g_tnet.grads[f"{c.name}.T"].abs().sum() > 0 for c in tnet.net.cells), "T must be learnable"


def check_mtnet_with_saturated_mask_is_tnet(full, conv):
    name = "mtnet_full" if full else "mtnet"
    tnet = conv_learner("tnet") if conv else make_learner("tnet", init_std=0.3)
    mtnet = conv_learner(name) if conv else make_learner(name, init_std=0.3)
    p_tnet = perturbed_params(tnet)  # non-identity T
    p_mtnet = {**p_tnet, **{k: torch.full_like(v, math.inf) for k, v in mtnet.init_params(0, torch.float64).items()
                            if k.endswith("zeta")}}
    batch = conv_batch(mtnet, p_mtnet) if conv else sine_batch(mtnet, p_mtnet, n=5)
    assert_reduces(mtnet, tnet, InnerSettings(0.1, 2, temperature=0.5), batch, p_mtnet, p_tnet,
                   keys_equal=("W", "b", "T", "bn_scale", "bn_shift"), exact=True)


def check_proposition_1_update_stays_in_span_of_first_d_columns_of_T(learner_fn):
    """Mask fixed to the first d rows, T invertible: after one inner step, the change of every
    cell's pre-activation y = T(Wx + b) lies in span(T[:, :d])."""
    learner = learner_fn()
    params = perturbed_params(learner, scale=0.3)
    batch = conv_batch(learner, params) if learner.net.loss != "mse" else sine_batch(learner, params, n=2)
    d = 3
    for cell in learner.net.cells:
        zeta = torch.full((cell.fan_out,), -math.inf, dtype=torch.float64)
        zeta[:d] = math.inf
        params[f"{cell.name}.zeta"] = zeta
    task = task_slice(batch, 0)
    fast, _ = inner_adapt(learner, InnerSettings(0.5, 1, mask_mode="argmax"), params, task)
    for cell in learner.net.cells:
        T = params[f"{cell.name}.T"]
        assert torch.linalg.matrix_rank(T) == cell.fan_out
        inp = torch.randn((7, cell.fan_in) if cell.kind == "dense" else (2, cell.fan_in, 6, 6), dtype=torch.float64)
        dy = pre_activation(cell, {**params, **fast}, inp) - pre_activation(cell, params, inp)
        dy = dy.movedim(1, -1).reshape(-1, cell.fan_out)  # rows: vectors in output space
        basis, _ = torch.linalg.qr(T[:, :d])
        residual = dy - dy @ basis @ basis.T
        assert dy.norm() > 1e-3
        assert residual.norm() < 1e-10 * dy.norm()


def check_meta_sgd_with_uniform_step_is_maml(conv):
    maml = conv_learner("maml") if conv else make_learner("maml", init_std=0.3)
    msgd = conv_learner("metasgd") if conv else make_learner("metasgd", init_std=0.3)
    p_maml = maml.init_params(0, torch.float64)
    p_msgd = {**p_maml, **{k: torch.full_like(v, 0.07) for k, v in msgd.init_params(0, torch.float64).items()
                           if k.endswith("_lr")}}
    batch = conv_batch(maml, p_maml) if conv else sine_batch(maml, p_maml, n=5)
    assert_reduces(msgd, maml, InnerSettings(0.07, 2), batch, p_msgd, p_maml,
                   keys_equal=("W", "b", "bn_scale", "bn_shift") if conv else WB)


def check_meta_curvature_with_identity_matrices_is_maml(method, conv):
    maml = conv_learner("maml") if conv else make_learner("maml", init_std=0.3)
    mc = conv_learner(method) if conv else make_learner(method, init_std=0.3)
    p_maml, p_mc = maml.init_params(0, torch.float64), mc.init_params(0, torch.float64)
    batch = conv_batch(maml, p_maml) if conv else sine_batch(maml, p_maml, n=5)
    g_mc, _ = assert_reduces(mc, maml, InnerSettings(0.1, 2), batch, p_mc, p_maml)
    assert ("l0.W_mc_out" in p_mc or "conv0.W_mc_out" in p_mc) == (method == "mc2")
    assert any(g.abs().sum() > 0 for k, g in g_mc.grads.items() if "_mc" in k)


# -- storage faults (unit and integration) ----------------------------------------------------------
def full_disk_after(capacity: int, name: str, code: int = errno.ENOSPC, nth: int = 1):
    """A stand-in for pipeline.storage._open: the nth file opened under this name takes `capacity`
    characters (or bytes), writes what fits and then fails with `code`, as a full disk does; every
    other file opens normally."""
    seen = {"n": 0}

    class Full:
        def __init__(self, f):
            self.f, self.left = f, capacity

        def write(self, data):
            if len(data) > self.left:
                self.f.write(data[:self.left])
                self.f.flush()
                self.left = 0
                raise OSError(code, os.strerror(code))
            self.left -= len(data)
            return self.f.write(data)

        def __getattr__(self, attr):
            return getattr(self.f, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def opener(path, mode):
        f = open(path, mode)
        if os.path.basename(path) != name:
            return f
        seen["n"] += 1
        if seen["n"] != nth:
            return f
        return Full(f)

    return opener


# -- simulated clusters (node failure, node loss in sweeps) -----------------------------------------
@contextlib.contextmanager
def simulated_cluster(head_cpus: int, node_cpus: list[int], log_to_driver: bool = True):
    """A ray.cluster_utils.Cluster with a head of `head_cpus` CPUs and one node per entry of
    `node_cpus`, this process its driver; yields (cluster, nodes)."""
    import ray
    from ray.cluster_utils import Cluster

    small = 80 * 2**20
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "object_store_memory": small,
                                                            "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=c, object_store_memory=small) for c in node_cpus]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=log_to_driver)
    try:
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def run_patched(tmp_path, patches: str, argv: list[str], **env):
    """`metatrain ARGV` in a new process whose Python processes all start with `patches` run (a
    sitecustomize.py on PYTHONPATH): the run's and its tracking process's (pipeline/tracking.py), so
    a fault can be planted where MLflow's calls are made. `env`: more environment variables. The
    finished process (subprocess.CompletedProcess, text)."""
    import subprocess
    import sys

    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(patches)
    path = os.pathsep.join(p for p in (str(site), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": path, **env})
