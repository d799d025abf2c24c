"""Checkpoints that survive their own corruption in training runs: the newest damaged, the previous
one is used and the run ends where an undisturbed run ends; neither usable is a one-line error, exit 2
(rotation and fallback without training: tests/unit)."""
import pytest
import torch

from pipeline.cli import main
from pipeline.driver import checkpoint
from pipeline.driver.run_dir import CHECKPOINT, PREVIOUS_CHECKPOINT
from pipeline.driver.trainer import Trainer

from .test_training import run, small_cfg
from helpers import damage


def test_save_rotates_the_previous_checkpoint(tmp_path):
    cfg = small_cfg(tmp_path, iterations=40)
    run(cfg, tmp_path / "r")
    # periodic saves at 10, 20, 30; the last iteration once, with its final status
    assert checkpoint.read(tmp_path / "r" / CHECKPOINT)["iteration"] == 40
    assert checkpoint.read(tmp_path / "r" / PREVIOUS_CHECKPOINT)["iteration"] == 30
    assert not list((tmp_path / "r").glob("*.tmp"))


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_resume_from_a_damaged_checkpoint_reaches_the_undisturbed_parameters(tmp_path, how):
    cfg = small_cfg(tmp_path, iterations=40)
    straight, _ = run(cfg, tmp_path / "straight")
    # a run whose newest checkpoint (iteration 40) is damaged: resume falls back to iteration 30
    damaged_dir = tmp_path / "damaged"
    run(cfg, damaged_dir)
    damage(damaged_dir / CHECKPOINT, how)
    lines = []
    resumed = Trainer(cfg, damaged_dir, log=lines.append)
    results = resumed.train(resume=True)
    notes = [l for l in lines if l.startswith("checkpoint:")]
    assert len(notes) == 1 and "checkpoint.pt is damaged" in notes[0] and "(iteration 30)" in notes[0], notes
    assert any(l.startswith("[maml] it 40/40") for l in lines)  # iterations 31..40 were trained again
    assert results["status"] == "completed" and results["iterations"] == 40
    for k in straight.params:
        assert torch.allclose(straight.params[k], resumed.params[k], rtol=0, atol=1e-6), k
    # the next save replaced the damaged file instead of keeping it as the fallback
    assert checkpoint.read(damaged_dir / CHECKPOINT)["iteration"] == 40
    assert checkpoint.read(damaged_dir / PREVIOUS_CHECKPOINT)["iteration"] == 30


def test_a_checkpoint_missing_keys_is_damaged(tmp_path):
    cfg = small_cfg(tmp_path, iterations=20)
    run(cfg, tmp_path / "r")
    state = checkpoint.read(tmp_path / "r" / CHECKPOINT)
    del state["optimizer"]
    torch.save(state, tmp_path / "r" / CHECKPOINT)
    lines = []
    assert checkpoint.load(tmp_path / "r", lines.append)["iteration"] == 10
    assert len(lines) == 1 and "missing key(s) optimizer" in lines[0]


def test_cli_eval_falls_back_and_resume_with_no_usable_checkpoint_exits_2(tmp_path, capsys):
    sets = ["--local", "--set", f"output_dir={tmp_path}", "--set", "run_name=r", "--set", "iterations=20",
            "--set", "meta_batch_size=4", "--set", "eval.tasks=10", "--set", "train.checkpoint_every=10",
            "--set", "tracking.enabled=false"]
    assert main(["train", "sine_quick", *sets]) == 0
    run_dir = tmp_path / "r"
    damage(run_dir / CHECKPOINT, "truncated")
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--local", "--tasks", "5", "--shots", "5"]) == 0
    out = capsys.readouterr().out
    assert [l for l in out.splitlines() if l.startswith("checkpoint:")] == [
        f"checkpoint: {CHECKPOINT} is damaged (unreadable: " + out.split("(unreadable: ")[1].split("\n")[0]]
    assert "at iteration 10:" in out  # evaluated the previous checkpoint
    damage(run_dir / PREVIOUS_CHECKPOINT, "garbage")
    for cmd in (["resume", str(run_dir), "--local"], ["eval", str(run_dir), "--local"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"metatrain: error: RUN_DIR: no usable checkpoint in {run_dir}")
        assert "checkpoint.pt is damaged" in err and "checkpoint.prev.pt is damaged" in err
