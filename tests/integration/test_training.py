"""In-process meta-training: determinism, resume, learning, the non-finite guard."""
import json

import pytest
import torch
import yaml

from pipeline.config import load_config
from pipeline.driver import checkpoint
from pipeline.driver.run_dir import RESULTS
from pipeline.driver.trainer import Trainer


def small_cfg(tmp_path, **over):
    sets = {"method": "maml", "iterations": 40, "meta_batch_size": 8, "model.hidden": "[20,20]",
            "eval.tasks": 50, "eval.shots": "[5,10]", "train.checkpoint_every": 10, "train.log_every": 5,
            "output_dir": str(tmp_path), "backend": "local", "train.plots": "false"}
    sets.update(over)
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


def run(cfg, run_dir, **kw):
    trainer = Trainer(cfg, run_dir, log=lambda m: None, **kw)
    return trainer, trainer.train()


def test_same_seed_gives_the_same_run(tmp_path):
    cfg = small_cfg(tmp_path, method="mtnet")
    a, res_a = run(cfg, tmp_path / "a")
    b, res_b = run(cfg, tmp_path / "b")
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])
    assert res_a["results"] == res_b["results"]
    c, _ = run(small_cfg(tmp_path, method="mtnet", seed=1), tmp_path / "c")
    assert not torch.equal(a.params["l0.W"], c.params["l0.W"])


CONV = {"task.name": "synthetic_images", "task.ways": 3, "task.shots": 1, "task.query": 2, "task.image_size": 16,
        "model.filters": 4, "eval.shots": "[1]", "eval.tasks": 6}


def test_auto_tasks_per_vmap_is_timed_once_recorded_and_kept_on_resume(tmp_path):
    over = {**CONV, "method": "mtnet", "iterations": 6, "train.tasks_per_vmap": "auto"}
    cfg = small_cfg(tmp_path, **over)
    lines = []
    Trainer(cfg, tmp_path / "run", log=lines.append).train()
    timed = [l for l in lines if l.startswith("train.tasks_per_vmap: auto -> ")]
    assert len(timed) == 1 and "(ms per shard call: whole " in timed[0] and ", 4 " in timed[0] and ", 1 " in timed[0]
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["tasks_per_vmap"]
    assert recorded == cfg.train.tasks_per_vmap and isinstance(recorded, int)
    # A resumed run keeps what its first start recorded (here as if that had been 2), untimed.
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    saved["train"]["tasks_per_vmap"] = 2
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(saved))
    lines.clear()
    resumed = Trainer(small_cfg(tmp_path, **over), tmp_path / "run", log=lines.append)
    resumed.train(resume=True)
    assert resumed.experiment.chunk == 2 and not any("auto ->" in l for l in lines)


def test_auto_tasks_per_vmap_takes_the_whole_shard_for_a_dense_network_untimed(tmp_path):
    """Not timed: a timed choice would tie a sine run's rounding (and so its numbers after 60,000
    iterations) to the machine's load at start."""
    lines = []
    t = Trainer(small_cfg(tmp_path, method="mtnet", iterations=4, **{"train.tasks_per_vmap": "auto"}), tmp_path / "run",
                log=lines.append)
    t.train()
    assert [l for l in lines if "auto ->" in l] == [
        "train.tasks_per_vmap: auto -> whole shard (dense network, not timed)"]
    assert t.experiment.chunk is None
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["tasks_per_vmap"] == 0


def test_the_query_loss_curve_is_computed_on_ten_iterations_per_log_window_and_the_last(tmp_path):
    from pipeline.shards.compiled import curve_at
    from pipeline.shards.experiment import Experiment

    cfg = small_cfg(tmp_path, iterations=45, **{"train.log_every": 20})
    assert [i for i in range(45) if curve_at(cfg, i)] == [*range(1, 45, 2), 44]
    exp = Experiment(cfg)
    params = exp.init_params()
    with_curve, without = exp.train_shard(params, 1, range(3)), exp.train_shard(params, 2, range(3))
    assert without.curve_sum is None and with_curve.curve_sum.shape == (2,)  # before and after one inner step
    run(cfg, tmp_path / "r")
    lines = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [l["iteration"] for l in lines] == [20, 40, 45]
    for l in lines:  # adaptation lowers the query loss on average, as the curve shows
        assert len(l["query_loss_per_step"]) == 2 and l["query_loss_per_step"][1] < l["query_loss_per_step"][0]


class Crash(Exception):
    pass


@pytest.mark.parametrize("method", ["maml", "mtnet", "metasgd"])
def test_checkpoint_and_resume_match_an_uninterrupted_run(tmp_path, method):
    cfg = small_cfg(tmp_path, method=method)
    straight, _ = run(cfg, tmp_path / "straight")

    def crash_at_25(msg):
        if msg.startswith(f"[{method}] it 25/"):
            raise Crash

    with pytest.raises(Crash):
        Trainer(cfg, tmp_path / "crashed", log=crash_at_25).train()
    assert checkpoint.load(tmp_path / "crashed")["iteration"] == 20  # last periodic checkpoint
    resumed = Trainer(cfg, tmp_path / "crashed", log=lambda m: None)
    results = resumed.train(resume=True)
    assert results["status"] == "completed" and results["iterations"] == 40
    for k in straight.params:
        assert torch.equal(straight.params[k], resumed.params[k]), k
    lines = [json.loads(l) for l in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert [l["iteration"] for l in lines] == list(range(5, 41, 5))


@pytest.mark.parametrize("method", ["maml", "mtnet"])
def test_short_meta_training_lowers_post_adaptation_mse(tmp_path, method):
    # Thesis MLP and alpha; a wider weight init and a larger beta leave the early plateau sooner.
    cfg = small_cfg(tmp_path, method=method, iterations=800, meta_batch_size=10, alpha=0.01, beta=0.01,
                    **{"model.hidden": "[40,40]", "model.init_std": 0.1, "eval.tasks": 200, "eval.shots": "[10]"})
    untrained = Trainer(cfg, tmp_path / "untrained", log=lambda m: None).evaluate()["10"]["mean"]
    _, results = run(cfg, tmp_path / "trained")
    trained = results["results"]["10"]["mean"]
    print(f"{method}: untrained {untrained:.3f} -> trained {trained:.3f}")
    assert trained < 0.5 * untrained, (trained, untrained)


def test_non_finite_steps_never_reach_the_parameters(tmp_path):
    cfg = small_cfg(tmp_path, alpha=1e30, iterations=100, **{"train.max_bad_steps": 5})
    trainer, results = run(cfg, tmp_path / "div")
    init = Trainer(cfg, tmp_path / "x", log=lambda m: None).params
    assert results["status"] == "diverged"
    assert results["skipped_steps"] == 5 and trainer.iteration == 5
    for k, v in trainer.params.items():
        assert torch.isfinite(v).all()
        assert torch.equal(v, init[k])  # every step was non-finite, so nothing was applied
    saved = json.loads((tmp_path / "div" / RESULTS).read_text())
    assert saved["status"] == "diverged"


def test_gradient_clipping_bounds_the_meta_gradient_norm(tmp_path):
    from pipeline.shards.experiment import Experiment

    cfg = small_cfg(tmp_path, **{"train.grad_clip": 0.05, "iterations": 1})
    exp = Experiment(cfg)
    result = exp.train_shard(exp.init_params(), 0, range(cfg.meta_batch_size))
    norm = torch.sqrt(sum((g / result.n_tasks).pow(2).sum() for g in result.grads.values())).item()
    assert norm > 0.05  # so the clip acts
    clipped, _ = run(cfg, tmp_path / "c")
    free, _ = run(small_cfg(tmp_path, iterations=1), tmp_path / "f")
    init = exp.init_params()
    # Adam's first step moves every coordinate by about beta whatever the scale, so compare the
    # clipped gradient itself: it is the unclipped one times 0.05 / norm.
    assert not torch.equal(clipped.params["l0.W"], init["l0.W"])
    assert torch.allclose(clipped.record.state_dict()["optimizer"]["state"][0]["exp_avg"] * norm / 0.05,
                          free.record.state_dict()["optimizer"]["state"][0]["exp_avg"], rtol=1e-4)


def test_a_gradient_that_would_overflow_adam_is_a_skipped_step(tmp_path):
    """1e25 is finite in float32, but its square is not: Adam's second moment would become inf and
    freeze that coordinate for good. Such a step is skipped and counted like a non-finite one."""

    cfg = small_cfg(tmp_path, iterations=3, **{"train.max_bad_steps": 5})

    class Huge:  # a backend whose shard sums are huge but finite
        name, workers, restarts, placement = "local", 1, 0, "in process"

        def __init__(self, real):
            self.real = real

        def meta_gradient(self, params, iteration, carry=None):
            r = self.real.meta_gradient(params, iteration, carry)
            if iteration == 1:
                r.grads["l0.W"] = r.grads["l0.W"] * 0 + 1e25
            return r

        def __getattr__(self, name):  # eval_chunks, the chunk-size timing: the real backend's
            return getattr(self.real, name)

        def close(self):
            pass

    from pipeline.distributed.backends import LocalBackend

    t = Trainer(cfg, tmp_path / "h", log=lambda m: None)
    t.backend = Huge(LocalBackend(cfg, t.experiment))
    results = t.train()
    assert results["skipped_steps"] == 1 and results["status"] == "completed"
    state = t.record.state_dict()["optimizer"]["state"]
    assert all(bool(torch.isfinite(s["exp_avg_sq"]).all()) for s in state.values())
