import os
import sys
from pathlib import Path

# One intra-op thread per process, here and in the processes tests start (CLI runs, Ray drivers):
# `make test` runs two pytest workers on two cores, and a second OpenMP thread per process only
# oversubscribes them.
# Ray's own workers already take one thread per CPU they hold.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).parent))

from pipeline.learners import conv4, mlp  # noqa: E402
from pipeline.meta_batch import InnerSettings, Learner  # noqa: E402
from pipeline.rules import get_rule  # noqa: E402
from tasks.regression import Sinusoid  # noqa: E402
from tasks.sampling import sample_batch  # noqa: E402

# The longest files first: `make test` hands whole files (--dist loadfile) to two workers in
# collection order (--no-loadscope-reorder: xdist's default puts files with many tests first, and
# the chaos file, two long tests, then ran alone at the end for 4 minutes).
LONG_FIRST = ("test_chaos.py", "test_sweep.py", "test_sweep_recovery.py", "test_meta_lstm.py", "test_jobs.py",
              "test_learned_optimizer.py", "test_images.py", "test_distributed.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file stays


def _omniglot_root() -> Path | None:
    """The real partial Omniglot (DESIGN section 3): $METATRAIN_OMNIGLOT, else ../shared/data/omniglot."""
    repo = Path(__file__).resolve().parent.parent
    for c in (os.environ.get("METATRAIN_OMNIGLOT"), repo.parent / "shared/data/omniglot", "/work/shared/data/omniglot"):
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


@pytest.fixture
def inner1():
    return InnerSettings(alpha=0.1, steps=1)


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


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """A finished tiny sine run and Omniglot-layout image run (tests/tiny_runs.py), shared by the
    adapt / eval --data / serving tests; tests may add files to them but never change them."""
    from tiny_runs import image_run, omniglot_layout, sine_run

    root = tmp_path_factory.mktemp("tiny_runs")
    data = omniglot_layout(root / "omniglot")
    return {"sine": sine_run(root / "runs"), "image": image_run(root / "runs", data), "data": data}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray per test module that asks for it (sweeps run their Tune trials on it)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             object_store_memory=150 * 2**20, logging_level="ERROR")
    yield
    ray.shutdown()
