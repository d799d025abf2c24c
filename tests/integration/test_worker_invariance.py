"""Bitwise invariance to the number of shard workers (train.block_tasks): 1, 2, 3 and 5 Ray workers
of one kind (one torch thread each) give the same parameters to the last bit (`torch.equal`, not a
tolerance) after 40 iterations: MAML and MT-net on sine, MAML conv4 on the real Omniglot, and a
learned optimizer on quadratics (whose optimizees carry over from one iteration to the next), its
meta-loss on the training or the held-out draw. A difference would stay from the iteration it
appears in on (bitwise, the parameters carry it), and every iteration runs the same blocks, so 40
iterations (each case's draws over two checkpoint intervals and, for the optimizer, 20 optimizee
lifetimes) check what 200 did at a fifth of the time."""
import pytest
import torch

from pipeline.config import load_config
from pipeline.driver.trainer import Trainer

from helpers import NEW_IN_SMALL2, OMNIGLOT, needs_omniglot

WORKERS = (1, 2, 3, 5)
ITERATIONS = 40
COMMON = {"iterations": ITERATIONS, "backend": "ray", "ray.cpus_per_worker": 0.5, "tracking.enabled": False,
          "train.plots": False, "train.checkpoint_every": 20, "train.log_every": 20}


def sine(method):
    return "sine_quick", {"method": method, "meta_batch_size": 7, "train.block_tasks": 2, "eval.tasks": 20}


def omniglot():
    zips = [str(OMNIGLOT / f"images_background_small{i}.zip") for i in (1, 2)]
    return None, {"method": "maml", "task.name": "omniglot", "task.data": zips, "task.shots": 1, "task.query": 1,
                  "eval.shots": [1], "task.split": "alphabet", "task.test_alphabets": NEW_IN_SMALL2,
                  "meta_batch_size": 5, "train.block_tasks": 1, "train.tasks_per_vmap": "auto", "eval.tasks": 10}


def quadratics():
    return "l2l_quadratic_cpu", {"meta_batch_size": 10, "inner_steps": 40, "train.unroll": 20, "train.block_tasks": 3,
                                 "eval.tasks": 10, "eval.inner_steps": 40}


def heldout_quadratics():  # train.meta_loss: heldout: each term on the optimizee's held-out draw
    base, over = quadratics()
    return base, {**over, "train.meta_loss": "heldout"}


CASES = {"maml-sine": lambda: sine("maml"), "mtnet-sine": lambda: sine("mtnet"),
         "maml-conv4-omniglot": omniglot, "l2l-quadratics": quadratics, "l2l-heldout-quadratics": heldout_quadratics}


@pytest.mark.parametrize("case", [pytest.param(c, marks=needs_omniglot) if "omniglot" in c else c for c in CASES])
def test_one_two_three_and_five_workers_give_the_same_parameters_bitwise(local_ray, tmp_path, case):
    base, over = CASES[case]()
    params = {}
    for n in WORKERS:
        cfg = load_config(base, {**COMMON, **over, "ray.workers": n, "output_dir": str(tmp_path), "run_name": f"w{n}"})
        with Trainer(cfg, tmp_path / f"w{n}", log=lambda m: None) as t:
            results = t.train()
            assert results["workers"] == n and results["iterations"] == ITERATIONS
            params[n] = {k: v.detach().clone() for k, v in t.params.items()}
    for n in WORKERS[1:]:
        for k, v in params[1].items():
            assert torch.equal(params[n][k], v), f"{n} workers, {k}: max diff {(params[n][k] - v).abs().max():.3g}"


def test_a_population_on_one_or_three_workers_gives_the_same_parameters_bitwise(local_ray, tmp_path):
    """The same blocks serve a packed population (every member's tasks of a block in one call)."""
    from pipeline.driver.population import Population

    from helpers import configs

    params = {}
    for n in (1, 3):
        cfgs = configs(tmp_path / f"w{n}", "mtnet", iterations=30, **{"backend": "ray", "ray.workers": n,
                                                                       "train.block_tasks": 2,
                                                                       "ray.cpus_per_worker": 0.5})
        with Population(cfgs, [tmp_path / f"w{n}" / c.run_name for c in cfgs], log=lambda m: None) as pop:
            pop.train()
            params[n] = {k: v.clone() for k, v in pop.params.items()}
    assert all(torch.equal(params[3][k], v) for k, v in params[1].items())
