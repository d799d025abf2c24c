"""train.precision: bf16 (each conv / dense layer in bfloat16, the rest in float32) against fp32 on
real Omniglot tasks, and tf32 (a CUDA setting: on a CPU exactly fp32).

Stated tolerances, measured: a bf16 meta-gradient points the way of the fp32 one (cosine similarity
0.92-0.94 for MAML, MT-net and Meta-SGD at 16 filters, 1-shot, on an Intel CPU with AVX-512 bf16
kernels; 0.8467 for Meta-SGD on an AVX2-only AMD EPYC, whose bf16 matmuls round differently;
asserted > 0.75, far above the ~0 of an unrelated direction in these ~30,000 dimensions); its
relative error (0.35-0.41) is that of 8-bit mantissas through batch norm on 1-6 images and a
second-order inner step. What counts is training: a short MAML run in bf16 reaches a meta-test
accuracy inside the fp32 run's 95% interval."""
import pytest
import torch

from pipeline.config import load_config
from pipeline.driver.trainer import Trainer
from pipeline.shards.experiment import Experiment

from helpers import NEW_IN_SMALL2, OMNIGLOT, SMALL1_ALPHABETS, needs_omniglot


def omniglot(**over):
    sets = {"task.name": "omniglot", "task.data": [str(OMNIGLOT / "images_background_small1.zip"),
                                                    str(OMNIGLOT / "images_background_small2.zip")],
            "task.rotations": True, "task.shots": 1, "task.query": 5, "eval.shots": [1], "task.split": "alphabet",
            "task.test_alphabets": NEW_IN_SMALL2, "task.train_alphabets": SMALL1_ALPHABETS, "model.filters": 16,
            "alpha": 0.4, "train.compile": "never", "backend": "local", "tracking.enabled": False,
            "train.plots": False}
    sets.update(over)
    return load_config(None, sets)


def flat(grads: dict) -> torch.Tensor:
    # conv biases feed batch norm, which removes them: their true gradient is 0 and what is left is rounding
    return torch.cat([g.flatten() for k, g in grads.items() if not (k.startswith("conv") and k.endswith(".b"))])


@needs_omniglot
@pytest.mark.parametrize("method", ["maml", "mtnet", "metasgd"])
def test_bf16_meta_gradient_points_the_way_of_fp32_and_tf32_is_fp32_on_a_cpu(method):
    grads = {}
    for precision in ("fp32", "tf32", "bf16"):
        exp = Experiment(omniglot(method=method, meta_batch_size=8, **{"train.precision": precision}))
        params = exp.init_params()
        assert all(v.dtype == torch.float32 for v in params.values())
        result = exp.train_shard(params, 0, range(8))
        assert all(g.dtype == torch.float32 for g in result.grads.values())  # meta-gradients in fp32
        grads[precision] = flat(result.grads)
    assert torch.equal(grads["tf32"], grads["fp32"])
    a, b = grads["fp32"], grads["bf16"]
    cosine = float(a @ b / a.norm() / b.norm())
    assert 0.75 < cosine < 0.9999, cosine  # close, and not secretly fp32


@needs_omniglot
def test_a_short_bf16_training_reaches_the_fp32_accuracy(tmp_path):
    accuracy = {}
    for precision in ("fp32", "bf16"):
        cfg = omniglot(method="maml", meta_batch_size=16, iterations=200, **{
            "train.precision": precision, "eval.inner_steps": 3, "eval.tasks": 200, "train.tasks_per_vmap": 8,
            "output_dir": str(tmp_path)})
        with Trainer(cfg, tmp_path / precision, log=lambda m: None) as t:
            accuracy[precision] = t.train()["results"]["1"]
    fp32, bf16 = accuracy["fp32"], accuracy["bf16"]
    print({k: (round(v["mean"], 4), round(v["ci95"], 4)) for k, v in accuracy.items()})  # 0.5628 / 0.5794 here
    assert fp32["mean"] - fp32["ci95"] > 0.4  # learned: 5-way chance is 0.2
    assert abs(bf16["mean"] - fp32["mean"]) <= fp32["ci95"], (fp32, bf16)
    assert bf16["mean"] != fp32["mean"]  # a different computation
