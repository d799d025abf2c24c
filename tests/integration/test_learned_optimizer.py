"""Learned optimizers (Andrychowicz et al. 2016) meta-trained: learning, resume mid-trajectory,
worker-count invariance, and a sweep with its report (the optimizer against an independent reference,
the baselines, the MNIST loader and bad input: tests/unit)."""
import json

import pytest
import torch

from pipeline.driver import checkpoint
from pipeline.driver.trainer import Trainer

from helpers import quad_cfg


def test_short_meta_training_lowers_the_final_loss_of_fresh_quadratics(tmp_path, capsys):
    cfg = quad_cfg(tmp_path, iterations=150, meta_batch_size=16, inner_steps=20, alpha=0.1, beta=0.01,
                   **{"train.unroll": 5, "eval.inner_steps": 20, "eval.tasks": 100, "train.checkpoint_every": 50,
                      "train.log_every": 50})
    untrained = Trainer(cfg, tmp_path / "untrained", log=lambda m: None)
    before = untrained.evaluate()["l2l"]
    with Trainer(cfg, tmp_path / "trained", log=lambda m: None) as trainer:
        results = trainer.train()
    after = results["results"]["l2l"]
    assert results["status"] == "completed" and after["n"] == 100
    assert after["mean"] + after["ci95"] < before["mean"] - before["ci95"], (before["mean"], after["mean"])
    assert (tmp_path / "trained" / "plots" / "optimizee_loss.png").is_file()
    # `metatrain eval` of the run says its own protocol, not a few-shot one
    from pipeline.cli import main

    assert main(["eval", str(tmp_path / "trained"), "--local", "--tasks", "20"]) == 0
    out = capsys.readouterr().out
    assert "protocol: fresh optimizees, 20 optimizer steps each" in out and "query point" not in out


def test_resume_mid_trajectory_matches_an_uninterrupted_run(tmp_path):
    cfg = quad_cfg(tmp_path)  # 12 iterations = 4 trajectories of 3 unrolls; checkpoints every 3 iterations

    class Crash(Exception):
        pass

    def crash_at(msg):
        if msg.startswith("[l2l] it") and msg.split("/")[0].endswith(" 9"):
            raise Crash

    straight = Trainer(cfg, tmp_path / "straight", log=lambda m: None)
    straight.train()
    cfg_mid = quad_cfg(tmp_path, **{"train.checkpoint_every": 4})  # a checkpoint inside a trajectory
    with pytest.raises(Crash):
        Trainer(cfg_mid, tmp_path / "crashed", log=crash_at).train()
    state = checkpoint.load(tmp_path / "crashed")
    assert state["iteration"] == 8 and "carry" in state  # 8 = trajectory 2, unroll 2 of 3
    resumed = Trainer(cfg_mid, tmp_path / "crashed", log=lambda m: None)
    resumed.train(resume=True)
    for k in straight.params:
        assert torch.equal(straight.params[k], resumed.params[k]), k


def test_one_and_two_ray_workers_give_the_same_optimizer(tmp_path):
    """The optimizee batch sharded over Ray workers, the optimizees' state travelling with its shard."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             logging_level="ERROR")
    try:
        params = {}
        for workers in (1, 2):
            cfg = quad_cfg(tmp_path, backend="ray", meta_batch_size=5, **{"ray.workers": workers})
            with Trainer(cfg, tmp_path / f"w{workers}", log=lambda m: None) as trainer:
                results = trainer.train()
                params[workers] = {k: v.detach().clone() for k, v in trainer.params.items()}
            assert results["workers"] == workers and results["backend"] == "ray"
        for k in params[1]:
            err = (params[1][k] - params[2][k]).abs().max().item()
            assert err <= 1e-5 * params[1][k].abs().max().item(), k
    finally:
        ray.shutdown()


def test_a_learned_optimizer_sweep_and_its_report(tmp_path):
    """`metatrain sweep` over optimizers - the learned one (meta-trained in its trial) and a
    hand-designed baseline - through real Ray Tune and MLflow (SQLite): one report row per swept
    optimizer, its cell the trial's own result. (One sweep: a second Tune run cost CI a minute.)"""
    import pyarrow.parquet as pq
    import ray
    import yaml

    from pipeline.sweeps.driver import run_sweep

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 2**20, logging_level="ERROR")
    try:
        set_ = {"inner_steps": 20, "eval.inner_steps": 20, "eval.tasks": 20, "meta_batch_size": 4, "iterations": 8,
                "train.unroll": 5, "train.log_every": 4, "train.checkpoint_every": 4, "beta": 0.01, "alpha": 0.1,
                "eval.baselines": {"sgd": 0.01}}
        path = tmp_path / "opt_tiny.yaml"
        path.write_text(yaml.safe_dump({"base": "l2l_quadratic_cpu", "name": "opt_tiny", "set": set_,
                                        "output_dir": str(tmp_path / "sweeps"),
                                        "space": {"method": {"grid": ["l2l", "adam"]}},
                                        "resources": {"cpus": 0.5, "workers": 0}}))
        assert run_sweep(str(path), log=lambda m: None) == 0
        sweep_dir = tmp_path / "sweeps" / "opt_tiny"
        md = (sweep_dir / "report.md").read_text()
        cells = pq.read_table(sweep_dir / "report.parquet").to_pylist()
        assert len(cells) == 2 and "final quadratic loss" in md.lower()
        assert "\n| l2l | " in md and "\n| adam | " in md  # one row per swept optimizer
        manifest = json.loads((sweep_dir / "trials.json").read_text())
        for t in manifest.values():
            res = json.loads((sweep_dir / "trials" / t["name"] / "results.json").read_text())
            own = res["results"][res["method"]]
            assert set(res["results"]) == {res["method"], "sgd"}  # the trial's own optimizer and the baseline
            match = [c for c in cells if all(c.get(k) == v for k, v in t["config"].items() if k in c)]
            assert len(match) == 1 and match[0]["mean"] == pytest.approx(own["mean"])
            assert match[0]["K"] == 20  # the evaluation horizon
    finally:
        ray.shutdown()
