"""A population's whole iteration on its device (pipeline/driver/population_step.py: tasks drawn,
meta-gradients and the Adam update as one function, the host reading the results once per
window) against the same population trained step by step (Population._step, which
tests/integration/test_population.py checks against solo runs). The reference is therefore the
step-by-step path: what these tests check is that the whole iteration is the same computation
with the same bookkeeping (divergence, checkpoints, halving rungs, PBT decisions, records)."""
import json

import pytest
import torch

from pipeline.driver import checkpoint
from pipeline.driver.population import Population
from pipeline.driver.schedulers import Halving, Pbt

from helpers import configs

TIMING = ("tasks_per_s",)  # the only entries of metrics.jsonl that may differ between two runs


def train(root, whole: bool, method: str = "mtnet", members=None, scheduler=None, **over):
    """(results, final checkpoints, metrics.jsonl records without timings, log lines, the windows
    the host read: None step by step)."""
    kw = {} if members is None else {"members": members}
    cfgs = configs(root, method, **kw, **{"task.sample_on": "device", **over})
    dirs = [root / c.run_name for c in cfgs]
    lines = []
    with Population(cfgs, dirs, log=lines.append, whole_iteration=whole, scheduler=scheduler) as pop:
        assert (pop.whole is not None) == whole  # the path under test is the one taken
        results = pop.train()
        reads = pop.whole.reads if whole else None
    records = [[{k: v for k, v in json.loads(line).items() if k not in TIMING}
                for line in (d / "metrics.jsonl").read_text().splitlines()]
               if (d / "metrics.jsonl").exists() else [] for d in dirs]  # a member stopped before its first log
    return results, [checkpoint.load(d) for d in dirs], records, lines, reads


def assert_records_close(got: list, want: list, rel: float) -> None:
    """Same entries at the same iterations, numbers within rel (the curves too)."""
    assert [sorted(e) for e in got] == [sorted(e) for e in want]
    for g, w in zip(got, want):
        for key, value in w.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert g[key] == pytest.approx(value, rel=rel, abs=1e-9), (w["iteration"], key)
            elif key == "query_loss_per_step":
                assert g[key] == pytest.approx(value, rel=rel), (w["iteration"], key)


def assert_states_close(got: list, want: list, rel: float) -> None:
    for g, w in zip(got, want):
        assert (g["status"], g["iteration"]) == (w["status"], w["iteration"])
        for k, v in w["params"].items():
            torch.testing.assert_close(g["params"][k], v, rtol=rel, atol=rel * 1e-2)
        for j, s in w["optimizer"]["state"].items():
            assert int(g["optimizer"]["state"][j]["step"]) == int(s["step"])


@pytest.mark.parametrize("mode", ["never", "graphs"])
def test_the_whole_iteration_equals_the_population_step_by_step(tmp_path, mode):
    """3 MT-nets (different alphas, betas, temperatures, seeds), 120 iterations with a checkpoint at
    60 and query-loss curves every 5 iterations: eagerly the whole iteration is the same ops in the
    same order as the step-by-step path (bitwise); compiled (train.compile: graphs, which on a CPU
    is the same function compiled without CUDA graphs, traced with the task draw inside) within 1e-5."""
    over = {"iterations": 120, "train.checkpoint_every": 60}
    want, want_states, want_records, _, _ = train(tmp_path / "steps", False, **over, **{"train.compile": "never"})
    torch._dynamo.reset()
    try:
        got, states, records, lines, reads = train(tmp_path / mode, True, **over, **{"train.compile": mode})
    finally:
        torch._dynamo.reset()  # no graph of this test counts against a later test's recompile limit
    rel = 0.0 if mode == "never" else 1e-5
    if mode != "never":
        assert any("population iteration compiled" in line for line in lines), lines
        assert not [line for line in lines if "failed" in line], lines
    assert [r["status"] for r in got] == ["completed"] * 3
    for g, w in zip(got, want):
        assert g["results"]["10"]["mean"] == pytest.approx(w["results"]["10"]["mean"], rel=max(rel, 1e-12))
    assert_states_close(states, want_states, rel)
    for g, w in zip(records, want_records):
        assert_records_close(g, w, max(rel, 1e-12))
        assert len(w) == 3 and w[0]["query_loss_per_step"]  # the curve's windows were crossed
    previous = [checkpoint.read(tmp_path / mode / f"m{i}" / checkpoint.PREVIOUS_CHECKPOINT) for i in range(3)]
    assert [s["iteration"] for s in previous] == [60] * 3  # the periodic checkpoint ended a window
    assert reads == 4  # windows ending at 50 (log), 60 (checkpoint), 100 (log), 120 (end)


def test_a_member_diverging_inside_a_window_is_frozen_where_the_step_by_step_population_freezes_it(tmp_path):
    """alpha = 1000 overflows within a few iterations; the device counts the non-finite streak and
    freezes the member mid-window; the host, reading the window, finds the same iteration, saves the
    member's checkpoint as diverged there, and the others train on unchanged."""
    members = [{"alpha": 0.01, "seed": 0}, {"alpha": 1000.0, "seed": 1}, {"alpha": 0.02, "seed": 2}]
    over = {"iterations": 120, "inner_steps": 3, "train.max_bad_steps": 5, "train.checkpoint_every": 60,
            "train.log_every": 100}  # windows of up to 60 iterations
    runs = {whole: train(tmp_path / str(whole), whole, "maml", members, **over) for whole in (False, True)}
    (want, want_states, want_records, _, _), (got, states, records, lines, _) = runs[False], runs[True]
    assert [r["status"] for r in got] == ["completed", "diverged", "completed"]
    assert [(r["iterations"], r["skipped_steps"]) for r in got] == [(r["iterations"], r["skipped_steps"]) for r in want]
    assert got[1]["iterations"] < 60  # inside the first window
    assert_states_close(states, want_states, 0.0)
    at_divergence = checkpoint.read(tmp_path / "True" / "m1" / checkpoint.PREVIOUS_CHECKPOINT)
    assert (at_divergence["status"], at_divergence["iteration"]) == ("diverged", got[1]["iterations"])
    assert any(line.startswith("m1: diverged: 5 consecutive non-finite") for line in lines), lines
    for g, w in zip(records, want_records):
        assert_records_close(g, w, 1e-12)


def test_halving_rungs_and_pbt_decisions_end_windows_and_decide_as_step_by_step(tmp_path):
    """Successive halving (rungs at 8 and 16 of 6 members) and PBT (a decision every 10 iterations of
    8 members): the windows end at every rung and decision, the same members stop and exploit the
    same donors, and every member ends where the step-by-step population's does (bitwise, eager)."""
    halving = [{"alpha": a, "seed": s} for a, s in ((0.001, 0), (0.01, 1), (0.05, 0), (0.3, 1), (2.0, 0), (0.02, 1))]
    pbt = Pbt(10, 0.25, 0.25, (0.8, 1.2), {"alpha": {"loguniform": [1e-3, 1.0]}}, (3, 0))
    for name, kw in (("halving", {"members": halving, "scheduler": Halving(8, 2.0)}),
                     ("pbt", {"members": halving + halving[:2], "scheduler": pbt})):
        over = {"iterations": 30, "eval.val_tasks": 20, "train.log_every": 1000, "train.checkpoint_every": 10}
        runs = {whole: train(tmp_path / name / str(whole), whole, **kw, **over) for whole in (False, True)}
        (want, want_states, want_records, _, _), (got, states, records, _, _) = runs[False], runs[True]
        assert [(r["status"], r["iterations"]) for r in got] == [(r["status"], r["iterations"]) for r in want]
        assert [(r.get("pbt"), r.get("halving")) for r in got] == [(r.get("pbt"), r.get("halving")) for r in want]
        assert_states_close(states, want_states, 0.0)
        for g, w in zip(records, want_records):
            assert_records_close(g, w, 1e-12)
        if name == "halving":
            assert sorted(r["status"] for r in got) == ["completed"] * 2 + ["stopped"] * 4
        else:
            assert sum(bool(r.get("pbt", {}).get("lineage")) for r in got) >= 2  # decisions were taken


def test_conv_members_drawing_images_on_the_device_run_whole_as_step_by_step(tmp_path):
    """Conv4 MT-nets on 5-way 1-shot image tasks (synthetic images, classes, orders and pixels drawn
    on the device inside the whole iteration): the step-by-step population's parameters, eager.
    Not asserted bitwise: the two paths run their convolutions over differently shaped batches, and
    oneDNN may choose other kernels for them (bitwise on an AVX-512 Intel CPU; 1.5e-8 apart on 9 of
    72 elements on an AVX2-only AMD EPYC, in the full suite); 1e-5 relative as the compiled tests."""
    from pipeline.config import load_config

    states = {}
    for whole in (False, True):
        cfgs = [load_config("omniglot_5w1s_cpu", {
            "method": "mtnet", "task.name": "synthetic_images", "task.data": [], "task.query": 5,
            "task.sample_on": "device", "model.filters": 8, "model.batch_norm": "none", "meta_batch_size": 2,
            "iterations": 12, "eval.tasks": 10, "train.compile": "never", "train.log_every": 4, "backend": "local",
            "tracking.enabled": False, "train.plots": False, "output_dir": str(tmp_path / str(whole)),
            "alpha": alpha, "seed": seed, "run_name": f"c{i}"}) for i, (alpha, seed) in enumerate(((0.1, 0), (0.4, 1)))]
        dirs = [tmp_path / str(whole) / c.run_name for c in cfgs]
        with Population(cfgs, dirs, log=lambda m: None, whole_iteration=whole) as pop:
            assert (pop.whole is not None) == whole
            pop.train()
        states[whole] = [checkpoint.load(d) for d in dirs]
    assert_states_close(states[True], states[False], 1e-5)
    assert not torch.equal(states[True][0]["params"]["conv0.W"], states[True][1]["params"]["conv0.W"])


def test_a_compiled_halving_population_runs_whole_through_its_rungs_as_eager(tmp_path):
    """train.compile: always with halving (6 -> 3 -> 2 -> 1 members at rungs 8, 16, 32): the whole
    iteration keeps the member dimension symbolic, so the rungs need no new graph except where the
    survivors' distinct seeds change (tasks are drawn once per seed); nothing falls back to eager,
    and the members end where the eager step-by-step population's do (1e-5). Every iteration draws
    the query-loss curve (train.log_every 10: curve_at's stride 1), so one graph serves each count of
    distinct seeds (2, then 1) instead of two (with and without the curve): a cold compile cache
    compiles 2 graphs here, not 4."""
    halving = [{"alpha": a, "seed": s} for a, s in ((0.001, 0), (0.01, 1), (0.05, 0), (0.3, 1), (2.0, 0), (0.02, 1))]
    over = {"iterations": 40, "eval.val_tasks": 50, "train.log_every": 10}
    want, want_states, _, _, _ = train(tmp_path / "eager", False, members=halving, scheduler=Halving(8, 2.0),
                                       **over)
    torch._dynamo.reset()
    try:
        got, states, _, lines, _ = train(tmp_path / "compiled", True, members=halving, scheduler=Halving(8, 2.0),
                                      **over, **{"train.compile": "always"})
    finally:
        torch._dynamo.reset()
    assert any("population iteration compiled" in line for line in lines), lines
    assert not [line for line in lines if "failed" in line], lines
    assert [(r["status"], r["iterations"]) for r in got] == [(r["status"], r["iterations"]) for r in want]
    assert sorted(r["status"] for r in got) == ["completed"] + ["stopped"] * 5
    assert_states_close(states, want_states, 1e-5)
