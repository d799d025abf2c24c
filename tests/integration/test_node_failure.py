"""A simulated 3-node cluster (ray.cluster_utils.Cluster): a node hosting workers is removed
mid-run; its workers are re-created on the remaining nodes and the run completes unchanged."""
import pytest
import torch

from pipeline.config import load_config
from pipeline.driver.trainer import Trainer

from helpers import simulated_cluster


@pytest.fixture
def three_nodes():
    with simulated_cluster(1, [2, 2]) as (cluster, workers):
        yield cluster, workers


def test_removed_node_workers_are_recreated_and_the_run_completes(three_nodes, tmp_path):
    cluster, worker_nodes = three_nodes
    sets = {"method": "maml", "iterations": 16, "meta_batch_size": 6, "model.hidden": "[20,20]", "eval.tasks": 20,
            "eval.shots": "[5]", "train.log_every": 4, "output_dir": str(tmp_path), "ray.workers": 3}
    cfg = load_config(None, [f"{k}={v}" for k, v in sets.items()])
    with Trainer(cfg, tmp_path / "undisturbed", log=lambda m: None) as t:
        t.train()
        reference = {k: v.detach().clone() for k, v in t.params.items()}

    removed, holder, logs = [], {}, []

    def remove_at_8(msg):
        logs.append(msg)
        if "it  8/16" in msg:
            hosting = {w["node_id"] for w in holder["trainer"].backend.worker_info()}
            victim = next(n for n in worker_nodes if n.node_id in hosting)
            cluster.remove_node(victim)
            removed.append(victim.node_id)

    with Trainer(cfg, tmp_path / "disturbed", log=remove_at_8) as t:
        holder["trainer"] = t
        results = t.train()
        assert removed, "no worker node was removed"
        assert results["status"] == "completed" and results["iterations"] == 16
        assert t.backend.restarts >= 1
        assert removed[0] not in {w["node_id"] for w in t.backend.worker_info()}
        for k, v in reference.items():
            assert torch.equal(v, t.params[k]), k
    assert any(m.startswith("ray: workers 3 -> 2: worker ") and "lost" in m for m in logs), logs
    assert any(m.startswith("ray: re-running tasks ") for m in logs), logs
