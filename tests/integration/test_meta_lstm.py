"""Meta-Learner LSTM: reduction to SGD and what is learned on conv cells, per-episode batch norm,
its gate figure, and a short meta-training run on real Omniglot (dense cells, the preprocessing and
meta-test batch norm: tests/unit)."""
import pytest
import torch

from pipeline.config import load_config
from pipeline.core.meta_batch import InnerSettings, shard_evaluate
from pipeline.driver.trainer import Trainer

from helpers import (
    NEW_IN_SMALL2,
    OMNIGLOT,
    SMALL1_ALPHABETS,
    check_c0_and_every_meta_learner_weight_receive_gradients,
    check_forced_gates_give_sgd_with_step_alpha,
    conv_batch,
    conv_learner,
    needs_omniglot,
    perturbed_params,
)


@pytest.mark.parametrize("conv", [True], ids=["conv"])
def test_forced_gates_give_sgd_with_step_alpha(conv):
    check_forced_gates_give_sgd_with_step_alpha(conv)


@pytest.mark.parametrize("conv", [True], ids=["conv"])
def test_c0_and_every_meta_learner_weight_receive_gradients(conv):
    check_c0_and_every_meta_learner_weight_receive_gradients(conv)


# conv cells
def test_no_batch_norm_statistic_leaks_from_one_task_to_the_next():
    """Guards the design (batch statistics of each forward pass, nothing stored): a learner with
    running statistics, or any state kept between calls, would fail these comparisons."""
    learner = conv_learner("metalstm")
    params = perturbed_params(learner)
    batch = conv_batch(learner, params, n=3)
    inner = InnerSettings(alpha=0.1, steps=3)
    together = shard_evaluate(learner, inner, params, batch)
    one = lambda i: {k: v[i:i + 1] for k, v in batch.items() if k != "noise"}  # noqa: E731
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 1, 2]):  # one task at a time, in sequences
        for i in order:
            assert torch.allclose(shard_evaluate(learner, inner, params, one(i))[1][0], together[1][i], rtol=1e-12)
    rev = shard_evaluate(learner, inner, params, {k: v.flip(0) for k, v in batch.items() if k != "noise"})
    assert torch.allclose(rev[1].flip(0), together[1], rtol=1e-12)
    # and a different task in the same batch changes nothing for the others
    other = {k: v.clone() for k, v in batch.items() if k != "noise"}
    other["x_support"][1] = torch.randn(other["x_support"][1].shape, generator=torch.Generator().manual_seed(5),
                                        dtype=torch.float64)
    changed = shard_evaluate(learner, inner, params, other)
    assert torch.allclose(changed[1][[0, 2]], together[1][[0, 2]], rtol=1e-12)
    assert not torch.allclose(changed[1][1], together[1][1])


def test_gate_figure_is_written_and_tracked(tmp_path):
    cfg = load_config(None, {"method": "metalstm", "inner_steps": 3, "eval.inner_steps": 3, "iterations": 10,
                             "meta_batch_size": 4, "model.hidden": [16, 16], "eval.tasks": 20, "eval.shots": [10],
                             "train.log_every": 5, "backend": "local", "output_dir": str(tmp_path),
                             "tracking.log_model": False})
    from mlflow import MlflowClient

    from pipeline.tracking import MlflowTracker, resolve_uri

    uri = resolve_uri("", tmp_path)
    cfg.tracking.uri = uri
    with Trainer(cfg, tmp_path / "r", log=lambda m: None, hooks=(MlflowTracker(cfg, uri, run_name="r"),)) as t:
        results = t.train()
    assert "plots/gates.png" in results["plots"]
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("metatrain").experiment_id])
    assert "plots/gates.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}


@needs_omniglot
def test_short_meta_training_on_real_omniglot_beats_the_untrained_learner(tmp_path):
    data = [str(OMNIGLOT / "images_background_small1.zip"), str(OMNIGLOT / "images_background_small2.zip")]
    cfg = load_config(None, {"method": "metalstm", "task.name": "omniglot", "task.data": data, "task.rotations": True,
                             "task.shots": 1, "task.query": 1, "eval.shots": [1], "task.split": "alphabet",
                             "task.train_alphabets": SMALL1_ALPHABETS, "task.test_alphabets": NEW_IN_SMALL2,
                             "inner_steps": 5, "eval.inner_steps": 5, "meta_batch_size": 8, "iterations": 150,
                             "beta": 0.003, "model.filters": 16, "eval.tasks": 200, "train.log_every": 50,
                             "train.tasks_per_vmap": 0,
                             "backend": "local", "output_dir": str(tmp_path), "tracking.enabled": False,
                             "train.plots": False})
    with Trainer(cfg, tmp_path / "r", log=lambda m: None) as t:
        untrained = t.evaluate()["1"]
        results = t.train()
    acc = results["results"]["1"]
    print(untrained, acc)
    assert acc["mean"] - acc["ci95"] > untrained["mean"] + untrained["ci95"] and acc["mean"] > 0.4, (untrained, acc)
