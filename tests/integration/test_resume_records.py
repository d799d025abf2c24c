"""`metatrain resume` never duplicates MLflow records, against a real SQLite store: a finished run
resumed 0, 1 and 2 times holds each metric step, one evaluation and one of each logged model; a
run killed (os._exit, no clean-up) at each step of its final logging is completed by one resume
to exactly those records; `--force` evaluates again as a new record."""
import subprocess
import sys
import textwrap

import pytest
from mlflow import MlflowClient

from pipeline.cli import main
from pipeline.tracking import resolve_uri

from helpers import run_patched

SETS = ["--local", "--set", "iterations=20", "--set", "meta_batch_size=4", "--set", "model.hidden=[10,10]",
        "--set", "eval.tasks=10", "--set", "eval.shots=[5]", "--set", "train.log_every=5",
        "--set", "train.checkpoint_every=10"]

# Planted in the run's process and its tracking process (helpers.run_patched): the process that
# makes the call dies at one step of the final logging, as a kill would: nothing after that step
# runs (no on_abort, no set_terminated). The patch wraps the real function.
KILLER = textwrap.dedent("""
    import os

    point = os.environ.get("KILL_POINT")
    if point:
        import pipeline.driver.record, pipeline.tracking

        def die_before(module, name):
            def dead(*a, **k):
                os._exit(9)
            setattr(module, name, dead)

        def die_after(module, name, when=lambda a, k: True):
            real = getattr(module, name)
            def then_die(*a, **k):
                out = real(*a, **k)
                if when(a, k):
                    os._exit(9)
                return out
            setattr(module, name, then_die)

        def half_logged_adapt_model(uri, run_id, network):  # killed inside MLflow's log_model: PENDING
            import mlflow
            mlflow.set_tracking_uri(uri)
            mlflow.initialize_logged_model(name="adapt_model", source_run_id=run_id,
                                           experiment_id=mlflow.get_run(run_id).info.experiment_id)
            os._exit(9)

        if point == "plots":  # results.json written, nothing drawn or logged: the run's process dies
            die_before(pipeline.driver.record, "write_run_plots")
        elif point == "evaluation":  # the evaluation's scalars logged, nothing after: the tracking process dies
            die_after(pipeline.tracking, "log_scalars", lambda a, k: any(n.startswith("eval_") for n in a[2]))
        elif point == "model":  # the network logged (READY), its tag and the adapt model not
            die_after(pipeline.tracking, "log_model")
        elif point == "adapt_model":
            pipeline.tracking.log_adapt_model = half_logged_adapt_model
""")


def records(uri: str) -> dict:
    """What the store holds of its one run: metric step lists, the evaluations, the logged models."""
    client = MlflowClient(tracking_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    tables = [a.path for a in client.list_artifacts(run.info.run_id) if a.path.startswith("eval_table")]
    return {"meta_loss": [m.step for m in client.get_metric_history(run.info.run_id, "meta_loss")],
            "evaluations": [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval_K5_mean")],
            "models": sorted((m.name, str(m.status)) for m in models), "tables": tables,
            "status": (run.info.status, run.data.tags["status"]),
            "model_tags": sorted(k for k in run.data.tags if k.endswith("model_uri"))}


WANT = {"meta_loss": [5, 10, 15, 20], "models": [("adapt_model", "READY"), ("model", "READY")],
        "tables": ["eval_table.json"], "status": ("FINISHED", "completed"),
        "model_tags": ["adapt_model_uri", "model_uri"]}


def check(got: dict) -> None:
    assert {k: v for k, v in got.items() if k != "evaluations"} == WANT
    assert [step for step, _ in got["evaluations"]] == [20]  # one evaluation, at the last iteration


def test_resuming_a_finished_run_changes_nothing_and_force_is_a_new_record(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "sine_quick", *SETS, "--set", f"output_dir={tmp_path}", "--set", "run_name=r"]) == 0
    uri = resolve_uri("", tmp_path)
    after = [records(uri)]
    capsys.readouterr()
    files = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    for _ in range(2):
        assert main(["resume", str(run)]) == 0
        out = capsys.readouterr()
        assert out.out == (f"{run}: finished (completed at iteration 20/20) with every record written; nothing to "
                           "do (--force evaluates it again)\n")
        assert "INFO" not in out.err and "Downloading" not in out.err
        after.append(records(uri))
    for got in after:
        check(got)
    assert after[0] == after[1] == after[2]
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == files  # nothing rewritten
    assert main(["resume", str(run), "--force"]) == 0
    out = capsys.readouterr()
    assert "Downloading" not in out.err and "INFO" not in out.err
    forced = records(uri)
    assert forced["evaluations"] == after[0]["evaluations"] * 2  # the same tasks again: a second record
    assert forced["models"] == WANT["models"] and forced["meta_loss"] == WANT["meta_loss"]


def test_the_command_ends_promptly_with_every_record_written(tmp_path):
    """`metatrain` as a user runs it (pipeline.cli.run: the process ends once the tracking process
    is drained, without the interpreter's teardown): the store holds the whole run, the output is
    all there, and resume finds nothing to do."""
    run = tmp_path / "r"
    argv = ["train", "sine_quick", *SETS, "--set", f"output_dir={tmp_path}", "--set", "run_name=r"]
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.rstrip().splitlines()[-1].startswith("mlflow: logged run ")  # the last line, flushed
    check(records(resolve_uri("", tmp_path)))
    again = subprocess.run([sys.executable, "-m", "pipeline.cli", "resume", str(run)], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "sine_quick", "--set", "alpha=-1"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == "metatrain: error: alpha: must be > 0, got -1.0"


@pytest.mark.parametrize("point", ["plots", "evaluation", "model", "adapt_model"])
def test_a_run_killed_while_logging_is_completed_once_by_resume(tmp_path, capsys, point):
    run = tmp_path / "r"
    argv = ["train", "sine_quick", *SETS, "--set", f"output_dir={tmp_path}", "--set", "run_name=r"]
    killed = run_patched(tmp_path, KILLER, argv, KILL_POINT=point)
    if point == "plots":  # the run's process was killed
        assert killed.returncode == 9, killed.stderr[-2000:]
    else:  # its tracking process was: the run says so in one line and how to finish
        last = killed.stderr.strip().splitlines()[-1]
        assert killed.returncode == 1 and last.startswith("metatrain: error: mlflow: the tracking process ended "
                                                          "(exit code 9)"), killed.stderr[-2000:]
        assert f"`metatrain resume {run}` logs what MLflow lacks" in last
    uri = resolve_uri("", tmp_path)
    before = records(uri)  # the MLflow run exists before training starts (mlflow.json names it)
    assert before["status"][1] == "running"  # nothing ended it
    if point == "adapt_model":
        assert ("adapt_model", "PENDING") in before["models"]
    assert (run / "results.json").is_file()
    assert main(["resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{run}: finished (completed at iteration 20); writing what is missing: " in out
    check(records(uri))
    assert (run / "plots" / "learning_curves.png").is_file()
    assert main(["resume", str(run)]) == 0  # and a second resume finds nothing to do
    assert "nothing to do" in capsys.readouterr().out
    check(records(uri))


def test_a_kill_while_a_new_store_is_built_leaves_no_half_built_store(tmp_path):
    """MLflow's migrations build a new SQLite store over seconds (in the tracking process, while the
    run trains): they run on a file beside it, linked into place when complete. A process killed
    just before the link leaves no store, and the next command builds a whole one; an existing
    store is never replaced."""
    db = tmp_path / "mlflow.db"
    code = ("import os, sys; import pipeline.tracking as t\n"
            "def die(*a, **k):\n    os._exit(9)\n"
            "os.link = die\nt.build_new_sqlite_store(sys.argv[1])\n")
    killed = subprocess.run([sys.executable, "-c", code, f"sqlite:///{db}"], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert not db.exists()  # only the temporary file was written (a leftover, never read)
    from pipeline.tracking import client_for, ensure_experiment

    exp = ensure_experiment(f"sqlite:///{db}", "kept")
    client_for(f"sqlite:///{db}").create_run(exp)
    from pipeline.tracking import build_new_sqlite_store

    build_new_sqlite_store(f"sqlite:///{db}")  # a store exists: left as it is
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    assert len(client.search_runs([exp])) == 1
