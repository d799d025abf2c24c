"""Fixtures and hooks for tests/unit and tests/integration; plain helpers are in helpers.py
(pytest.ini `pythonpath = tests` makes both importable from either folder)."""
import os

# One intra-op thread per process, here and in the processes tests start (CLI runs, Ray drivers):
# `make test` runs two pytest workers on two cores, and a second OpenMP thread per process only
# oversubscribes them.
# Ray's own workers already take one thread per CPU they hold.
os.environ["OMP_NUM_THREADS"] = "1"
# Runs join the Ray head that `metatrain cluster start` keeps on the machine (its record is in
# $METATRAIN_HOME): the tests' runs start their own, unless a test starts a head in a home of its own.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["METATRAIN_HOME"] = tempfile.mkdtemp(prefix="metatrain-home-tests-")
atexit.register(shutil.rmtree, os.environ["METATRAIN_HOME"], ignore_errors=True)  # each pytest process's own

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from pipeline.core.meta_batch import InnerSettings  # noqa: E402

# The longest files first: `make test` hands whole files (--dist loadfile) to two workers in
# collection order (--no-loadscope-reorder: xdist's default puts files with many tests first, and
# the chaos file, two long tests, then ran alone at the end for 4 minutes). All of them are in
# tests/integration; the unit halves of split modules keep their place.
LONG_FIRST = ("test_chaos.py", "test_worker_invariance.py", "test_sweep.py", "test_sweep_recovery.py",
              "test_meta_lstm.py", "test_jobs.py", "test_learned_optimizer.py", "test_images.py", "test_distributed.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}

    def key(item):
        return rank.get(item.path.name, len(rank)) if item.path.parent.name == "integration" else len(rank)

    items.sort(key=key)  # stable: the order within a file stays


@pytest.fixture
def inner1():
    return InnerSettings(alpha=0.1, steps=1)


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


def _compile_seconds() -> float:
    from torch._dynamo.utils import compile_times

    names, values = compile_times(repr="csv", aggregate=True)
    return dict(zip(names, map(float, values))).get("_compile.compile_inner", 0.0)


_COMPILED = [0.0]  # seconds counted before each torch._dynamo.reset(), which clears Dynamo's own counter
if os.environ.get("METATRAIN_COMPILE_TIMES"):
    _real_reset = torch._dynamo.reset

    def _counting_reset():
        _COMPILED[0] += _compile_seconds()
        _real_reset()

    torch._dynamo.reset = _counting_reset


def pytest_sessionfinish(session):
    """METATRAIN_COMPILE_TIMES=FOLDER: each pytest process (an xdist worker) writes the seconds it
    spent compiling (Dynamo + Inductor, torch._dynamo.utils.compile_times, summed across the tests'
    torch._dynamo.reset() calls) to FOLDER/<pid>.json, so a run of the suite can say what compiling
    cost it in its own processes (CLI runs, Ray workers and Tune trials that tests start compile in
    processes of their own and are not counted)."""
    folder = os.environ.get("METATRAIN_COMPILE_TIMES")
    if not folder:
        return
    import json
    from pathlib import Path

    Path(folder).mkdir(parents=True, exist_ok=True)
    Path(folder, f"{os.getpid()}.json").write_text(json.dumps(
        {"compile_s": _COMPILED[0] + _compile_seconds(), "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}))
