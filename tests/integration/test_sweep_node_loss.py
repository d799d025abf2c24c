"""A packed sweep on a simulated cluster (ray.cluster_utils.Cluster) loses the node that runs its
population mid-trial: Tune restarts the trial from its last checkpoint on the other node (the
sweep's max_failures), no member is lost or duplicated, and the report equals the undisturbed
sweep's, cell for cell."""
import json
import threading
import time

import psutil
import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster

from sweep_runs import sweep_ok, write_sweep

SMALL = 80 * 2**20


@pytest.fixture
def two_worker_nodes():
    # the head holds no CPU: the trial (1 CPU) runs on one of the two worker nodes
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": SMALL,
                                                            "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1, object_store_memory=SMALL) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


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


def checkpoint_registered(sweep_dir) -> bool:
    for path in sweep_dir.glob("tune/*/result.json"):
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("checkpoint_dir_name"):
                    return True
            except ValueError:
                pass
    return False


def test_a_packed_sweep_that_loses_its_node_resumes_elsewhere_and_reports_the_same(two_worker_nodes, tmp_path):
    cluster, nodes = two_worker_nodes
    space = {"alpha": {"grid": [0.003, 0.03]}, "seed": {"grid": [0, 1]}}
    over = {"set_": {"iterations": 60, "train.checkpoint_every": 20, "method": "mtnet"}, "max_concurrent_trials": 1,
            "max_failures": 2}
    reports = {}
    for name in ("calm", "lost"):
        (tmp_path / name).mkdir()
        path, sweep_dir = write_sweep(tmp_path / name, "node_loss", space, **over)
        removed = []

        def remove_the_trials_node():
            deadline = time.time() + 300
            while time.time() < deadline and not removed:
                if checkpoint_registered(sweep_dir):
                    node = node_of_trial(nodes)
                    if node is not None:
                        cluster.remove_node(node)
                        removed.append(node)
                time.sleep(0.05)

        watcher = threading.Thread(target=remove_the_trials_node, daemon=True)
        if name == "lost":
            watcher.start()
        sweep_ok(path, sweep_dir)
        if name == "lost":
            watcher.join()
            assert removed, "the trial's node was never removed"
        manifest = json.loads((sweep_dir / "trials.json").read_text())
        assert sorted(t["status"] for t in manifest.values()) == ["completed"] * 4  # none lost, none twice
        if name == "lost":
            assert any(t.get("retries") == 1 for t in manifest.values())
        rows = pq.read_table(sweep_dir / "report.parquet").to_pylist()
        reports[name] = sorted((r["alpha"], r["K"], r["mean"], r["ci95"]) for r in rows)
    assert reports["lost"] == reports["calm"]
