"""Results before decorations: a plot that cannot be written (full disk) or a model that cannot be
logged is one line saying what was saved and how to finish; results.json survives."""
import errno
import json

from pipeline.cli import main
from pipeline.driver.run_dir import CHECKPOINT, RESULTS


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_plotting_keeps_results_and_is_one_line(tmp_path, capsys, monkeypatch):
    import pipeline.driver.record

    monkeypatch.setattr(pipeline.driver.record, "write_run_plots", _disk_full)
    sets = ["--local", "--set", f"output_dir={tmp_path}", "--set", "run_name=r", "--set", "iterations=10",
            "--set", "meta_batch_size=4", "--set", "eval.tasks=10", "--set", "train.checkpoint_every=5",
            "--set", "tracking.enabled=false"]
    assert main(["train", "sine_quick", *sets]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    notes = [l for l in out.splitlines() if l.startswith("plots:")]
    assert len(notes) == 1, out
    assert "OSError: [Errno 28] No space left on device" in notes[0]
    assert f"{RESULTS} and {CHECKPOINT} are saved" in notes[0] and "metatrain resume" in notes[0]
    results = json.loads((tmp_path / "r" / RESULTS).read_text())
    assert results["status"] == "completed" and results["iterations"] == 10 and results["plots"] == []
    assert results["results"]["10"]["n"] == 10
    assert not (tmp_path / "r" / "plots").exists()

    # once there is space again, resume re-evaluates and writes the plots
    monkeypatch.undo()
    assert main(["resume", str(tmp_path / "r"), "--local"]) == 0
    results = json.loads((tmp_path / "r" / RESULTS).read_text())
    assert "plots/learning_curves.png" in results["plots"]
    assert (tmp_path / "r" / "plots" / "learning_curves.png").stat().st_size > 1000
