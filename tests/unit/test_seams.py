"""The declared seams: the outer step (guard, clip, Adam) against torch.optim.Adam, checkpoints in
its format, ShardResult's wire form, the method families and the task table."""
import numpy as np
import pytest
import torch

from pipeline.core.meta_batch import ShardResult
from pipeline.core.rules import RULES, get_rule
from pipeline.driver.families import FAMILIES, Family, family_of
from pipeline.driver.meta_step import StackedAdam
from tasks import KINDS, TASKS, image_format, names

SHAPES = {"l0.W": (40, 1), "l0.b": (40,), "l1.W": (1, 40)}


def _grads(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {k: torch.randn(*s, generator=g) * 10.0 ** (step % 5 - 2) for k, s in SHAPES.items()}


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_the_outer_step_of_one_run_is_torch_adam_bit_for_bit(clip):
    """A solo run's step is row 0 of the stacked step: after 60 steps of gradients spanning five
    orders of magnitude, its parameters and moments equal torch.optim.Adam's to the last bit (with
    the global-norm clip applied to torch's gradients by hand: clip_grad_norm_'s float64 formula)."""
    init = {k: torch.randn(*s, generator=torch.Generator().manual_seed(1)) for k, s in SHAPES.items()}
    ref = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    opt = torch.optim.Adam(list(ref.values()), lr=3e-3)
    adam = StackedAdam({k: v[None].clone() for k, v in init.items()}, torch.tensor([3e-3], dtype=torch.float64), clip)
    n = 4
    for step in range(60):
        g = _grads(step)
        norm = sum(float(v.double().pow(2).sum()) for v in g.values()) ** 0.5
        for k in ref:
            ref[k].grad = g[k] * (clip / norm) if clip and norm > clip else g[k].clone()
        opt.step()
        finite = adam.step({k: (v * n)[None] for k, v in g.items()}, torch.tensor([1.0]), n, torch.tensor([True]))
        assert finite.tolist() == [True]
    for k in ref:
        assert torch.equal(adam.params[k][0], ref[k].detach()), k
    state = adam.row_state(0, 3e-3)
    for j, k in enumerate(ref):
        assert torch.equal(state["state"][j]["exp_avg"], opt.state[ref[k]]["exp_avg"])
        assert torch.equal(state["state"][j]["exp_avg_sq"], opt.state[ref[k]]["exp_avg_sq"])
        assert int(state["state"][j]["step"]) == 60


def test_a_checkpointed_outer_step_loads_into_torch_adam_and_back():
    """row_state is torch.optim.Adam's own state-dict format: torch loads it, and load_row_state
    restores the moments and the step count into another row."""
    init = {k: torch.zeros(*s) for k, s in SHAPES.items()}
    betas = torch.tensor([1e-3, 2e-3], dtype=torch.float64)
    adam = StackedAdam({k: torch.stack([v, v]) for k, v in init.items()}, betas)
    for step in range(3):
        adam.step({k: torch.stack([v, 2 * v]) for k, v in _grads(step).items()}, torch.ones(2), 1,
                  torch.tensor([True, True]))
    state = adam.row_state(1, 2e-3)
    params = [torch.zeros(*s, requires_grad=True) for s in SHAPES.values()]
    opt = torch.optim.Adam(params, lr=2e-3)
    opt.load_state_dict(state)  # the format torch.optim.Adam writes
    assert opt.param_groups[0]["lr"] == 2e-3 and int(opt.state[params[0]]["step"]) == 3
    other = StackedAdam({k: v[None] for k, v in init.items()}, torch.tensor([2e-3], dtype=torch.float64))
    other.load_row_state(0, state)
    assert int(other.steps[0]) == 3 and torch.equal(other.exp_avg[0], adam.exp_avg[1])
    assert torch.equal(other.exp_avg_sq[0], adam.exp_avg_sq[1])
    other.load_row_state(0, {"state": {}, "param_groups": state["param_groups"]})  # before any step
    assert int(other.steps[0]) == 0 and not other.exp_avg.any()


def test_the_guard_skips_a_step_whose_gradient_would_overflow_adam():
    adam = StackedAdam({"w": torch.zeros(2, 3)}, torch.tensor([1e-3, 1e-3], dtype=torch.float64))
    grads = {"w": torch.tensor([[1e25, 0.0, 0.0], [1.0, 1.0, 1.0]])}  # finite, but its square is not
    finite = adam.step(grads, torch.tensor([1.0, float("nan")]), 1, torch.tensor([True, True]))
    assert finite.tolist() == [False, False] and not adam.flat.any() and adam.steps.tolist() == [0, 0]


@pytest.mark.parametrize("population", [False, True])
def test_a_shard_result_crosses_the_wire_unchanged(population):
    """to_wire: numpy arrays (what Ray serialises fast); from_wire: tensors again, equal values."""
    size = (3,) if population else ()
    r = ShardResult({"w": torch.randn(3, 2)}, torch.rand(size) if population else 1.25, 4, torch.rand(2),
                    torch.rand(size) if population else 0.5, {"theta": torch.randn(4, 5)})
    wire = r.to_wire()
    assert isinstance(wire.grads["w"], np.ndarray) and isinstance(wire.carry["theta"], np.ndarray)
    back = ShardResult.from_wire(wire)
    assert torch.equal(back.grads["w"], r.grads["w"]) and torch.equal(back.carry["theta"], r.carry["theta"])
    assert torch.equal(back.curve_sum, r.curve_sum) and back.n_tasks == 4
    if population:
        assert torch.equal(back.loss_sum, r.loss_sum) and torch.equal(back.metric_sum, r.metric_sum)
    else:
        assert (back.loss_sum, back.metric_sum) == (1.25, 0.5)
    merged = ShardResult.merge([back, back])
    assert torch.equal(merged.carry["theta"], torch.cat([r.carry["theta"]] * 2)) and merged.n_tasks == 8


def test_every_rule_names_a_family_with_a_shard_source_and_task_kinds():
    for name, rule in RULES.items():
        assert rule.family in FAMILIES, name
        source = FAMILIES[rule.family].source  # the one family table names the shard source
        assert all(callable(getattr(source, m, None)) for m in ("train_shard", "eval_shard", "time_chunk_sizes",
                                                                "set_chunk_size", "sample")), name
        assert set(rule.trains_on) <= set(KINDS), name
    assert family_of("mtnet").packs and family_of("mtnet").logs_model and family_of("mtnet").times_chunks
    assert not family_of("l2l").packs and not family_of("l2l").logs_model and not family_of("adam").packs
    assert get_rule("metalstm").query_bn == "support" and get_rule("maml").query_bn == "batch"


def test_family_declares_every_method_the_driver_calls():
    """Every attribute the driver, tracking and sweeps ask of a family (`.family.X` in pipeline/)
    is declared on the base class, so a new family sees what it must answer."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "pipeline"
    asked = {m for p in root.rglob("*.py") for m in re.findall(r"family(?:_of\([^)]*\))?\.(\w+)", p.read_text())}
    assert {"evaluate", "validate", "figures", "header", "source"} <= asked
    assert sorted(a for a in asked if not hasattr(Family, a)) == []


def test_the_task_table_answers_what_modules_used_to_list():
    assert names("regression") == ("sinusoid", "polynomial")
    assert names("optimizee") == ("quadratic", "mnist_mlp")
    assert set(names("images")) == {"omniglot", "miniimagenet", "synthetic_images"}
    assert all(spec.kind in KINDS for spec in TASKS.values())

    class Task:
        name, image_size = "omniglot", 0

    assert image_format(Task) == (1, 28)
    Task.name, Task.image_size = "miniimagenet", 32
    assert image_format(Task) == (3, 32)
    Task.name = "sinusoid"
    with pytest.raises(ValueError, match="not an image task"):
        image_format(Task)
