"""Checkpoints that survive their own corruption, without training: rotation, the newest damaged
and the previous one used, neither usable a one-line error (with training runs: tests/integration)."""
import pytest
import torch

from pipeline.driver import checkpoint
from pipeline.driver.run_dir import CHECKPOINT, PREVIOUS_CHECKPOINT

from helpers import damage


def state_at(iteration):
    p = torch.nn.Parameter(torch.full((3,), float(iteration)))
    opt = torch.optim.Adam([p], lr=0.1)
    return {"iteration": iteration, "params": {"l0.W": p.detach().clone()}, "optimizer": opt.state_dict(),
            "torch_rng": torch.get_rng_state(), "skipped": 0, "bad_streak": 0, "status": "running"}


def test_rotation_and_fallback_without_training(tmp_path):
    for it in (10, 20, 30):
        checkpoint.save(tmp_path, state_at(it))
    assert checkpoint.load(tmp_path, print)["iteration"] == 30
    assert checkpoint.read(tmp_path / PREVIOUS_CHECKPOINT)["iteration"] == 20
    damage(tmp_path / CHECKPOINT, "truncated")
    lines = []
    state = checkpoint.load(tmp_path, lines.append)
    assert state["iteration"] == 20 and torch.equal(state["params"]["l0.W"], torch.full((3,), 20.0))
    assert len(lines) == 1 and lines[0].startswith("checkpoint: checkpoint.pt is damaged (unreadable: ")
    assert lines[0].endswith("; using checkpoint.prev.pt (iteration 20) instead")
    # saving over a damaged newest file keeps the good previous one instead of rotating garbage in
    checkpoint.save(tmp_path, state_at(40))
    assert checkpoint.read(tmp_path / PREVIOUS_CHECKPOINT)["iteration"] == 20
    assert checkpoint.load(tmp_path, lines.append)["iteration"] == 40 and len(lines) == 1
    # both damaged, or none there: one-line CheckpointError (a ConfigError: exit 2)
    damage(tmp_path / CHECKPOINT, "garbage")
    damage(tmp_path / PREVIOUS_CHECKPOINT, "truncated")
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(tmp_path, lines.append)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"RUN_DIR: no usable checkpoint in {tmp_path}: ")
    with pytest.raises(checkpoint.CheckpointError, match="holds no checkpoint"):
        checkpoint.load(tmp_path / "empty", lines.append)
    # weights_only: a pickled object that is not plain tensors/containers is refused, not executed
    torch.save({"iteration": 1, "evil": object()}, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match="unreadable: UnpicklingError"):
        checkpoint.read(tmp_path / CHECKPOINT)


def test_a_row_state_is_torch_optim_adams_state_dict():
    """StackedAdam.row_state writes torch.optim.Adam's state-dict format without building one (that
    imports torch._dynamo): the param group equals a real Adam's, key order included, and the
    per-parameter state after a step equals the real optimizer's."""
    from pipeline.driver.meta_step import StackedAdam

    params = {"a": torch.tensor([[1.0, -2.0]]), "b": torch.tensor([[[0.5], [3.0]]])}
    stacked = StackedAdam({k: v.clone() for k, v in params.items()}, torch.tensor([0.01], dtype=torch.float64), 0.0)
    ref_params = [torch.nn.Parameter(v[0].clone()) for v in params.values()]
    ref = torch.optim.Adam(ref_params, lr=0.01)
    assert stacked.row_state(0, 0.01) == ref.state_dict()  # no step yet: no per-parameter state
    group, want = stacked.row_state(0, 0.01)["param_groups"][0], ref.state_dict()["param_groups"][0]
    assert list(group.items()) == list(want.items())
    grads = {"a": torch.tensor([[0.3, -0.1]]), "b": torch.tensor([[[1.0], [-2.0]]])}
    stacked.step(grads, torch.tensor([1.0], dtype=stacked.flat.dtype), 1, torch.ones(1, dtype=torch.bool))
    for p, g in zip(ref_params, grads.values()):
        p.grad = g[0].clone()
    ref.step()
    got, want = stacked.row_state(0, 0.01), ref.state_dict()
    assert got["param_groups"] == want["param_groups"]
    for j in want["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(got["state"][j][key], want["state"][j][key])
