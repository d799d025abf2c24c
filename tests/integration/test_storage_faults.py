"""A disk that fills (or fails) while a run or a sweep writes: one line naming the file, what was
kept and the command that finishes the job; no partial file left; nothing written before lost; and
that command, once space is freed, finishes the job. On a real 200 KB tmpfs where the test may mount
one (root), and at every write site of a run by a fault injected where pipeline/storage.py opens
its files (tests/helpers.py: the disk takes part of the write, then fails with ENOSPC)."""
import json
import subprocess

import pytest

from pipeline import storage
from pipeline.cli import main
from pipeline.driver import checkpoint

from helpers import full_disk_after
from sweep_runs import write_sweep

RUN = ["--local", "--set", "tracking.enabled=false"]  # MLflow's own store is not on the tested disk


def leftovers(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("metatrain: error: "), err
    return err.strip()


def test_a_run_on_a_full_tmpfs_ends_in_one_line_and_resumes_once_space_is_freed(tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root); the injected faults below cover every write site")
    try:
        code = main(["train", "sine_quick", *RUN, "--set", "iterations=1000", "--set", f"output_dir={disk}"])
        line = error_line(capsys)
        run = next(disk.iterdir())
        assert code == 2 and "(no space left on device" in line, line
        assert line.endswith(f"; once space is freed: metatrain resume {run}"), line
        assert not leftovers(disk)
        state = checkpoint.load(run, log=lambda m: None)  # the kept checkpoint loads
        assert f"the checkpoint of iteration {state['iteration']} in {run} is intact" in line
        assert all(json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines())  # no partial line
        subprocess.run(["mount", "-o", "remount,size=50m", str(disk)], check=True)
        assert main(["resume", str(run)]) == 0
        assert json.loads((run / "results.json").read_text())["iterations"] == 1000
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# (file, which of its writes fails, the command the line gives)
SITES = [("config.yaml.tmp", 1, "run the command again"), ("checkpoint.pt.tmp", 2, "metatrain resume"),
         ("metrics.jsonl", 2, "metatrain resume"), ("results.json.tmp", 1, "metatrain resume")]


@pytest.mark.parametrize("name,nth,command", SITES, ids=[s[0] for s in SITES])
def test_every_write_of_a_run_ends_in_one_line_and_its_command_finishes_the_job(tmp_path, capsys, monkeypatch,
                                                                               name, nth, command):
    args = ["train", "sine_quick", *RUN, "--set", "iterations=30", "--set", "train.checkpoint_every=10",
            "--set", "train.log_every=10", "--set", "train.plots=false", "--set", f"output_dir={tmp_path}"]
    monkeypatch.setattr(storage, "_open", full_disk_after(40, name, nth=nth))
    assert main(args) == 2
    line = error_line(capsys)
    target = name.removesuffix(".tmp")
    assert f"{target} not written (no space left on device" in line and f"once space is freed: {command}" in line
    assert not leftovers(tmp_path)
    monkeypatch.undo()
    runs = list(tmp_path.iterdir())
    if command.startswith("metatrain resume"):
        (run,) = runs
        before = checkpoint.load(run, log=lambda m: None)
        assert f"the checkpoint of iteration {before['iteration']} in {run} is intact" in line
        assert all(json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines())
        assert main(["resume", str(run)]) == 0
    else:
        assert main(args) == 0
    (run,) = [p for p in tmp_path.iterdir() if (p / "results.json").is_file()]
    assert json.loads((run / "results.json").read_text())["iterations"] == 30


def test_a_sweep_whose_report_cannot_be_written_says_how_to_write_it(local_ray, tmp_path, capsys, monkeypatch):
    path, sweep_dir = write_sweep(tmp_path, "full", {"seed": {"grid": [0, 1]}}, set_={"iterations": 20})
    monkeypatch.setattr(storage, "_open", full_disk_after(100, "report.md.tmp"))
    assert main(["sweep", str(path)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("metatrain: error: report.md not written (no space left on device"), line
    assert line.endswith(f"; once space is freed: metatrain report {sweep_dir}"), line
    assert not leftovers(sweep_dir) and (sweep_dir / "trials.json").is_file()
    monkeypatch.undo()
    assert main(["report", str(sweep_dir)]) == 0 and (sweep_dir / "report.md").is_file()
