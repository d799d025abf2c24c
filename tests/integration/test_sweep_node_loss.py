"""A packed sweep on a simulated cluster (ray.cluster_utils.Cluster) loses the node that runs its
population mid-trial: Tune restarts the trial from its last checkpoint on the other node (the
sweep's max_failures), no member is lost or duplicated, and the report equals the undisturbed
sweep's, cell for cell."""
import json

import psutil
import pyarrow.parquet as pq
import pytest

from helpers import simulated_cluster
from sweep_runs import after_first_checkpoint, sweep_ok, write_sweep


@pytest.fixture
def two_worker_nodes():
    # the head holds no CPU: the trial (1 CPU) runs on one of the two worker nodes
    with simulated_cluster(0, [1, 1], log_to_driver=False) as (cluster, nodes):
        yield cluster, nodes


def node_of_trial(nodes) -> object | None:
    """The worker node whose raylet is an ancestor of the trial's process (ray::ImplicitFunc)."""
    raylets = {n.all_processes["raylet"][0].process.pid: n for n in nodes}
    for p in psutil.Process().children(recursive=True):
        try:
            if (p.cmdline() or [""])[0].startswith("ray::ImplicitFunc"):
                for parent in p.parents():
                    if parent.pid in raylets:
                        return raylets[parent.pid]
        except psutil.Error:
            pass
    return None


def test_a_packed_sweep_that_loses_its_node_resumes_elsewhere_and_reports_the_same(two_worker_nodes, tmp_path):
    cluster, nodes = two_worker_nodes
    space = {"alpha": {"grid": [0.003, 0.03]}, "seed": {"grid": [0, 1]}}
    over = {"set_": {"iterations": 60, "train.checkpoint_every": 20, "method": "mtnet"}, "max_concurrent_trials": 1,
            "max_failures": 2}

    def remove_the_trials_node():
        node = node_of_trial(nodes)
        if node is not None:
            cluster.remove_node(node)
        return node

    reports = {}
    for name in ("calm", "lost"):
        (tmp_path / name).mkdir()
        path, sweep_dir = write_sweep(tmp_path / name, "node_loss", space, **over)
        if name == "calm":
            sweep_ok(path, sweep_dir)
        else:
            with after_first_checkpoint(sweep_dir, remove_the_trials_node) as removed:
                sweep_ok(path, sweep_dir)
            assert removed, "the trial's node was never removed"
        manifest = json.loads((sweep_dir / "trials.json").read_text())
        assert sorted(t["status"] for t in manifest.values()) == ["completed"] * 4  # none lost, none twice
        if name == "lost":
            assert any(t.get("retries") == 1 for t in manifest.values())
        rows = pq.read_table(sweep_dir / "report.parquet").to_pylist()
        reports[name] = sorted((r["alpha"], r["K"], r["mean"], r["ci95"]) for r in rows)
    assert reports["lost"] == reports["calm"]
