"""Elastic shard workers (ray.workers: {min, max}) on a real multi-node Ray (ray.cluster_utils.Cluster):
a run that starts on a one-CPU head grows when a second node joins at a random iteration and shrinks,
without waiting for a replacement, when that node is removed; its parameters equal a one-worker
run's to the last bit (train.block_tasks: fixed blocks added in a fixed tree)."""
import json
import random
import time

import torch

from pipeline.config import load_config
from pipeline.driver.run_dir import METRICS
from pipeline.driver.trainer import Trainer

from helpers import simulated_cluster

ITERATIONS = 200
SETTINGS = {"method": "mtnet", "iterations": ITERATIONS, "meta_batch_size": 8, "train.block_tasks": 2,
            "model.hidden": "[20,20]", "eval.tasks": 20, "eval.shots": "[5]", "train.log_every": 5,
            "train.checkpoint_every": 100, "ray.cpus_per_worker": 1, "ray.replace_timeout_s": 600,
            "tracking.enabled": False, "train.plots": False, "train.compile": "never"}


def cfg_for(tmp_path, workers):
    return load_config(None, [f"{k}={v}" for k, v in {**SETTINGS, "ray.workers": workers,
                                                        "output_dir": str(tmp_path)}.items()])


def train(cfg, run_dir, log):
    with Trainer(cfg, run_dir, log=log) as t:
        results = t.train()
        return results, {k: v.detach().clone() for k, v in t.params.items()}, t


def test_an_elastic_run_grows_when_a_node_joins_shrinks_when_it_leaves_and_matches_one_worker(tmp_path):
    import ray

    rng = random.Random(7)
    join_at = rng.randrange(20, 60, 5)  # a log line (every 5 iterations)
    with simulated_cluster(1, []) as (cluster, _):
        _, reference, _ = train(cfg_for(tmp_path, 1), tmp_path / "one", log=lambda m: None)

        lines, state, holder = [], {}, {}

        def chaos(msg):
            lines.append(msg)
            it = int(msg.split(" it ")[1].split("/")[0]) if msg.startswith("[mtnet] it ") else None
            if it == join_at and "node" not in state:
                state["node"] = cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
                # let the worker Ray places there start, so that it joins at the next iteration
                ray.wait(list(holder["t"].backend.pool.pending), num_returns=1, timeout=120)
            if "workers 1 -> 2" in msg:
                state["grown_at"] = holder["t"].iteration
            if it is not None and "grown_at" in state and it >= state["grown_at"] + 20 and "removed" not in state:
                cluster.remove_node(state["node"])
                state["removed"] = time.monotonic()

        with Trainer(cfg_for(tmp_path, "{min: 1, max: 2}"), tmp_path / "elastic", log=chaos) as t:
            holder["t"] = t
            results = t.train()
            finished = time.monotonic()
            params = {k: v.detach().clone() for k, v in t.params.items()}

    text = "\n".join(lines)
    # the start line, after any "waiting for ... workers" lines while the reference run's worker
    # still releases the one CPU (a loaded machine)
    start = next(i for i, line in enumerate(lines) if not line.startswith("ray: waiting for "))
    assert lines[start].startswith("ray: 1 shard worker(s) (elastic: 1 to 2) on 1 node(s)"), lines[:start + 1]
    assert "ray: workers 1 -> 2: node joined" in text, text[-3000:]
    shrink = [line for line in lines if line.startswith("ray: workers 2 -> 1: worker ")]
    # "worker 1 lost with its node" once Ray's control service has marked the node dead, else "lost"
    assert len(shrink) == 1 and "worker 1 lost" in shrink[0], text[-3000:]
    assert "ray: re-running tasks 4-7 (2 blocks) of lost worker 1 on worker 0" in text, text[-3000:]
    # shrunk at once: the lost blocks ran on the head's worker, not after ray.replace_timeout_s (600 s)
    assert finished - state["removed"] < 120
    assert results["status"] == "completed" and results["iterations"] == ITERATIONS
    assert [c[:2] for c in results["worker_changes"]] == [[1, 2], [2, 1]]
    counts = [json.loads(line)["workers"] for line in (tmp_path / "elastic" / METRICS).read_text().splitlines()]
    assert 2 in counts and counts[0] == 1 and counts[-1] == 1, counts  # the MLflow metric `workers`
    for k, v in reference.items():
        assert torch.equal(params[k], v), f"{k}: max diff {(params[k] - v).abs().max():.3g}"
