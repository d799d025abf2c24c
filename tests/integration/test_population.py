"""Populations (pipeline/driver/population.py): members trained as one program equal their solo runs.

References here are independent of the population code: solo runs of the ordinary Trainer (with
torch.optim.Adam). The functional per-member update against torch.optim.Adam itself: tests/unit."""
import json

import pytest
import torch

from pipeline.config import load_config
from pipeline.driver import checkpoint
from pipeline.driver.hooks import RunHook
from pipeline.driver.population import Population
from pipeline.driver.schedulers import Halving, Pbt
from pipeline.driver.trainer import Trainer
from pipeline.yaml_dataclasses import to_dict

from helpers import MEMBERS, OMNIGLOT, configs, needs_omniglot


def solo(cfg, run_dir) -> tuple[dict, dict]:
    with Trainer(cfg, run_dir, log=lambda m: None) as t:
        results = t.train()
        return {k: v.detach().clone() for k, v in t.params.items()}, results


def assert_rel_close(got: dict, want: dict, rel: float, what: str) -> None:
    for k, v in want.items():
        err = ((got[k] - v).abs().max() / v.abs().max().clamp_min(1e-12)).item()
        assert err <= rel, f"{what} {k}: relative difference {err:.2e} > {rel}"


@pytest.mark.parametrize("method", ["maml", "mtnet", "metasgd"])
def test_each_member_equals_its_solo_run(tmp_path, method):
    """Members differ in alpha, beta, temperature, seed and eval seed; after 200 iterations every
    member's parameters equal those of the same config trained alone (1e-5 relative), and so do
    its evaluation and its run directory's files."""
    cfgs = configs(tmp_path, method, iterations=200, **{"train.checkpoint_every": 100})
    with Population(cfgs, [tmp_path / f"pop{i}" for i in range(3)], log=lambda m: None) as pop:
        results = pop.train()
        members = [{k: v.clone() for k, v in m.params.items()} for m in pop.members]
    for i, cfg in enumerate(cfgs):
        want, want_results = solo(cfg, tmp_path / f"solo{i}")
        assert_rel_close(members[i], want, 1e-5, f"member {i}")
        got_mse, want_mse = results[i]["results"]["10"]["mean"], want_results["results"]["10"]["mean"]
        assert got_mse == pytest.approx(want_mse, rel=1e-5)
        assert results[i]["status"] == "completed" and results[i]["iterations"] == 200
        on_disk = json.loads((tmp_path / f"pop{i}" / "results.json").read_text())
        assert on_disk["results"]["10"]["mean"] == pytest.approx(got_mse, rel=1e-12)
        lines = (tmp_path / f"pop{i}" / "metrics.jsonl").read_text().splitlines()
        solo_lines = (tmp_path / f"solo{i}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(l)["iteration"] for l in lines] == [json.loads(l)["iteration"] for l in solo_lines]
        assert json.loads(lines[-1])["meta_loss"] == pytest.approx(json.loads(solo_lines[-1])["meta_loss"], rel=1e-4)
    assert members[0]["l0.W"].shape == (20, 1)


def test_a_diverging_member_is_frozen_and_the_others_equal_their_solo_runs(tmp_path):
    """alpha = 1000 with 3 inner steps overflows float32 within a few iterations (the solo run of
    the same config diverges at the same iteration: checked below)."""
    members = [{"alpha": 0.01, "seed": 0}, {"alpha": 1000.0, "seed": 1}, {"alpha": 0.02, "seed": 2}]
    cfgs = configs(tmp_path, "maml", members, iterations=120, inner_steps=3, **{"train.max_bad_steps": 5,
                                                                                 "train.checkpoint_every": 60})
    logs = []
    with Population(cfgs, [tmp_path / f"pop{i}" for i in range(3)], log=logs.append) as pop:
        results = pop.train()
        members_params = [{k: v.clone() for k, v in m.params.items()} for m in pop.members]
    assert [r["status"] for r in results] == ["completed", "diverged", "completed"]
    assert results[1]["iterations"] < 120 and results[1]["skipped_steps"] >= 5
    assert all(torch.isfinite(v).all() for v in members_params[1].values())  # kept from the last finite step
    assert any(l.startswith("pop1: diverged: 5 consecutive non-finite") for l in logs), logs
    for i in (0, 2):
        want, _ = solo(cfgs[i], tmp_path / f"solo{i}")
        assert_rel_close(members_params[i], want, 1e-5, f"member {i}")
    diverged_solo, solo_results = solo(cfgs[1], tmp_path / "solo1")
    assert solo_results["status"] == "diverged" and solo_results["iterations"] == results[1]["iterations"]
    # saved when it diverged, not only at the population's end (the end saved it once more)
    at_divergence = checkpoint.read(tmp_path / "pop1" / checkpoint.PREVIOUS_CHECKPOINT)
    assert (at_divergence["status"], at_divergence["iteration"]) == ("diverged", results[1]["iterations"])


def test_a_population_killed_after_a_member_diverged_resumes_to_the_undisturbed_members(tmp_path):
    """The diverging population above, killed at iteration 90 (after the member diverged and the
    others saved at 60) and resumed from the run directories: the diverged member stays as it was
    saved when it diverged, the others resume from 60, and all end as in the undisturbed run."""
    from pipeline.driver.hooks import DriverHook

    class Crash(DriverHook):
        def on_log(self, population, entry):
            if entry["iteration"] == 90:
                raise KeyboardInterrupt

    members = [{"alpha": 0.01, "seed": 0}, {"alpha": 1000.0, "seed": 1}, {"alpha": 0.02, "seed": 2}]
    over = {"iterations": 120, "inner_steps": 3, "train.max_bad_steps": 5, "train.checkpoint_every": 60,
            "train.log_every": 30}
    ends = {}
    for name in ("undisturbed", "resumed"):
        cfgs = configs(tmp_path / name, "maml", members, **over)
        dirs = [tmp_path / name / c.run_name for c in cfgs]
        if name == "resumed":
            with pytest.raises(KeyboardInterrupt), Population(cfgs, dirs, log=lambda m: None,
                                                              reporter=Crash()) as pop:
                pop.train()
        with Population(cfgs, dirs, log=lambda m: None) as pop:
            results = pop.train(resume=name == "resumed")
        ends[name] = ([(r["status"], r["iterations"]) for r in results], [checkpoint.load(d)["params"] for d in dirs])
    assert ends["resumed"][0] == ends["undisturbed"][0] and ends["undisturbed"][0][1][0] == "diverged"
    for got, want in zip(ends["resumed"][1], ends["undisturbed"][1]):
        for k, v in want.items():
            torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-8)


class StopAt(RunHook):
    """Simulates a kill: raises once the member has saved the checkpoint of `iteration`."""

    def __init__(self, iteration):
        self.iteration = iteration

    def on_checkpoint(self, trainer):
        if trainer.iteration == self.iteration:
            raise KeyboardInterrupt


def test_a_killed_population_resumes_to_the_undisturbed_parameters_and_members_resume_alone(tmp_path):
    """Killed while saving the checkpoint of iteration 100 (members 0 and 1 saved it, member 2 not):
    resumed, every member equals the undisturbed population. A member's checkpoint is a solo
    checkpoint: `Trainer.train(resume=True)` of member 2 alone reaches the undisturbed parameters."""
    cfgs = configs(tmp_path, "mtnet", iterations=150, **{"train.checkpoint_every": 50})
    with Population(cfgs, [tmp_path / f"calm{i}" for i in range(3)], log=lambda m: None) as pop:
        pop.train()
        calm = [{k: v.clone() for k, v in m.params.items()} for m in pop.members]

    dirs = [tmp_path / f"hit{i}" for i in range(3)]
    with Population(cfgs, dirs, log=lambda m: None, hooks=lambda i: (StopAt(100),) if i == 1 else ()) as pop:
        with pytest.raises(KeyboardInterrupt):
            pop.train()
    assert [checkpoint.load(d)["iteration"] for d in dirs] == [100, 100, 50]

    alone = tmp_path / "alone"  # member 2's run directory, continued by a solo trainer
    alone.mkdir()
    for name in ("checkpoint.pt", "config.yaml", "metrics.jsonl"):
        (alone / name).write_bytes((dirs[2] / name).read_bytes())
    with Trainer(cfgs[2], alone, log=lambda m: None) as t:
        t.train(resume=True)
        assert_rel_close({k: v.detach() for k, v in t.params.items()}, calm[2], 1e-5, "member 2 resumed alone")

    logs = []
    with Population(cfgs, dirs, log=logs.append) as pop:
        results = pop.train(resume=True)
        for i, m in enumerate(pop.members):
            assert_rel_close(m.params, calm[i], 1e-5, f"member {i}")
    assert all(r["status"] == "completed" and r["iterations"] == 150 for r in results)
    assert sum("resuming" in l and "at iteration 50/150" in l for l in logs) == 3, logs


def test_members_clip_their_own_meta_gradient_norm_as_solo_runs_do(tmp_path):
    """train.grad_clip: each member's global norm is clipped on its own (the solo trainer's rule)."""
    cfgs = configs(tmp_path, "maml", iterations=100, **{"train.grad_clip": 0.5, "train.checkpoint_every": 100})
    with Population(cfgs, [tmp_path / f"pop{i}" for i in range(3)], log=lambda m: None) as pop:
        pop.train()
        members = [{k: v.clone() for k, v in m.params.items()} for m in pop.members]
    for i, cfg in enumerate(cfgs):
        assert_rel_close(members[i], solo(cfg, tmp_path / f"solo{i}")[0], 1e-5, f"member {i}")
    unclipped = solo(load_config(to_dict(cfgs[0]), ["train.grad_clip=0"]), tmp_path / "unclipped")[0]
    assert max((members[0][k] - v).abs().max().item() for k, v in unclipped.items()) > 1e-3  # the clip acted


def test_one_and_two_ray_workers_give_the_populations_in_process_parameters(local_ray, tmp_path):
    """Ray shard workers each compute every member on their range of task indices, exactly as a
    solo run's workers compute its shards (meta-batch 5: ranges of 3 and 2 tasks with 2 workers)."""
    over = {"iterations": 40, "meta_batch_size": 5}
    with Population(configs(tmp_path / "here", "mtnet", **over), [tmp_path / f"here{i}" for i in range(3)],
                    log=lambda m: None) as pop:
        pop.train()
        here = [{k: v.clone() for k, v in m.params.items()} for m in pop.members]
    for n in (1, 2):
        logs = []
        cfgs = configs(tmp_path / f"w{n}", "mtnet", backend="ray", **over, **{"ray.workers": n})
        with Population(cfgs, [tmp_path / f"w{n}-{i}" for i in range(3)], log=logs.append) as pop:
            results = pop.train()
            assert len(pop.backend.actors) == n
            for i, m in enumerate(pop.members):
                assert_rel_close(m.params, here[i], 1e-5, f"{n} workers, member {i}")
        assert any(l.startswith(f"ray: {n} shard worker(s)") for l in logs), logs
        assert all(r["status"] == "completed" for r in results)


def test_the_per_task_loop_inside_the_member_vmap_equals_the_whole_shard(tmp_path):
    """train.tasks_per_vmap: 1 in a population: the loop over tasks runs inside the vmap over members
    (its inner gradient then stays torch.func's)."""
    params = {}
    for tpv in (0, 1):
        cfgs = configs(tmp_path / str(tpv), "mtnet", members=MEMBERS[:2], iterations=30,
                       **{"train.tasks_per_vmap": tpv})
        with Population(cfgs, [tmp_path / f"{tpv}-{i}" for i in range(2)], log=lambda m: None) as pop:
            pop.train()
            params[tpv] = [{k: v.clone() for k, v in m.params.items()} for m in pop.members]
    for i in range(2):
        assert_rel_close(params[1][i], params[0][i], 1e-5, f"member {i}")


def test_members_in_groups_equal_one_call(tmp_path, monkeypatch):
    """On a CPU a compiled shard function takes members in groups (CPU_MEMBERS_PER_CALL), the last
    group padded with member 0: every member's loss, metric and gradients equal one call
    over all of them. 5 members in groups of at most 2: three groups of 2, one padding row dropped."""
    from pipeline.members import PopulationSpec
    from pipeline.shards import stacked as population_shards
    from pipeline.shards.stacked import PopulationShards, member_groups

    members = [{"alpha": 0.01 * (i + 1), "seed": i % 2, "gumbel_temperature": 0.5 + i} for i in range(5)]
    logs = []
    shards = PopulationShards(PopulationSpec.from_configs(configs(tmp_path, "mtnet", members=members,
                                                                  **{"train.compile": "always"})),
                              log=logs.append)
    params = {k: torch.stack([v + 0.01 * i for i in range(5)]) for k, v in shards.experiment.init_params().items()}
    results = {}
    for most in (0, 2):
        monkeypatch.setattr(population_shards, "CPU_MEMBERS_PER_CALL", most)
        results[most] = shards.train_shard(params, 98, range(4))  # no curve: the compiled function
    assert [g.tolist() for g in member_groups(5, 2)] == [[0, 1], [2, 3], [4, 0]]
    assert not shards.fns[False].eager and not any("failed" in line for line in logs), logs  # compiled groups
    one, grouped = results[0], results[2]
    assert one.curve_sum is None and grouped.curve_sum is None
    for name in ("loss_sum", "metric_sum"):
        assert getattr(grouped, name).shape == getattr(one, name).shape
        torch.testing.assert_close(getattr(grouped, name), getattr(one, name), rtol=1e-6, atol=1e-7)
    for k, g in one.grads.items():
        assert g.shape[0] == 5 and g.abs().sum() > 0, k
        torch.testing.assert_close(grouped.grads[k], g, rtol=1e-6, atol=1e-7, msg=lambda m: f"{k}: {m}")


HALVING = [{"alpha": a, "seed": s} for a, s in ((0.001, 0), (0.01, 1), (0.05, 0), (0.3, 1), (2.0, 0), (0.02, 1))]


def test_successive_halving_stops_the_worst_members_and_the_survivors_train_as_if_alone(tmp_path):
    """6 MT-nets, 40 iterations, grace period 8, reduction factor 2: rungs at 8, 16 and 32 keep 3, 2
    and 1 members. At every rung the kept members are the best by their recorded val_loss (ties to
    the lower index), computed here from the records alone; a stopped member's run ends `stopped` at
    its rung with a checkpoint that `metatrain eval` evaluates; the survivor's parameters equal those
    of a population that never had the others (1e-5)."""
    from pipeline.cli import main

    cfgs = configs(tmp_path / "halving", "mtnet", members=HALVING, iterations=40, **{"eval.val_tasks": 50})
    run_dirs = [tmp_path / "halving" / c.run_name for c in cfgs]
    lines = []
    with Population(cfgs, run_dirs, log=lines.append, scheduler=Halving(8, 2.0)) as pop:
        results = pop.train()
    assert [line.split(":")[0] for line in lines if line.startswith("halving at it")] == [
        "halving at it 8", "halving at it 16", "halving at it 32"]
    rungs = {i: {r["iteration"]: r for r in res["halving"]} for i, res in enumerate(results)}
    alive = set(range(len(cfgs)))
    for it, keep in ((8, 3), (16, 2), (32, 1)):
        assert {i for i in rungs if it in rungs[i]} == alive  # every running member was ranked there
        ranked = sorted(alive, key=lambda i: (rungs[i][it]["val_loss"], i))
        assert {i for i in alive if rungs[i][it]["kept"]} == set(ranked[:keep])
        for i in set(ranked[keep:]):
            assert results[i]["status"] == "stopped" and results[i]["iterations"] == it
            assert checkpoint.load(run_dirs[i])["status"] == "stopped"
        alive = set(ranked[:keep])
    (survivor,) = alive
    assert results[survivor]["status"] == "completed" and results[survivor]["iterations"] == 40
    stopped = next(i for i in range(len(cfgs)) if results[i]["status"] == "stopped")
    assert main(["eval", str(run_dirs[stopped]), "--local", "--tasks", "20"]) == 0

    alone = configs(tmp_path / "alone", "mtnet", members=[HALVING[survivor]], iterations=40)
    with Population(alone, [tmp_path / "alone" / "m0"], log=lambda m: None) as pop:
        pop.train()
    want = checkpoint.load(tmp_path / "alone" / "m0")["params"]
    got = checkpoint.load(run_dirs[survivor])["params"]
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-7)


def test_a_halving_population_killed_after_a_rung_resumes_to_the_undisturbed_members(tmp_path):
    """Stopped at iteration 24 (after the rungs at 8 and 16) and resumed from the run directories:
    the members stopped before stay stopped, and every member ends as in the undisturbed run."""
    from pipeline.driver.hooks import DriverHook

    class Crash(DriverHook):
        def on_log(self, population, entry):
            if entry["iteration"] == 24:
                raise KeyboardInterrupt

    over = {"iterations": 40, "eval.val_tasks": 50, "train.log_every": 8, "train.checkpoint_every": 8}
    results = {}
    for name in ("undisturbed", "resumed"):
        cfgs = configs(tmp_path / name, "mtnet", members=HALVING, **over)
        dirs = [tmp_path / name / c.run_name for c in cfgs]
        if name == "resumed":
            with pytest.raises(KeyboardInterrupt), Population(cfgs, dirs, log=lambda m: None, reporter=Crash(),
                                                              scheduler=Halving(8, 2.0)) as pop:
                pop.train()
            assert sum(checkpoint.load(d)["status"] == "stopped" for d in dirs) == 4
        with Population(cfgs, dirs, log=lambda m: None, scheduler=Halving(8, 2.0)) as pop:
            results[name] = pop.train(resume=name == "resumed")
        results[name + "_params"] = [checkpoint.load(d)["params"] for d in dirs]
    assert [(r["status"], r["iterations"]) for r in results["resumed"]] == [
        (r["status"], r["iterations"]) for r in results["undisturbed"]]
    for got, want in zip(results["resumed_params"], results["undisturbed_params"]):
        for k, v in want.items():
            torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-8)


def test_compiled_halving_keeps_one_graph_as_the_population_narrows_and_equals_eager(tmp_path):
    """train.compile: always with halving: the member dimension stays symbolic, so the rungs (6 -> 3
    -> 2 -> 1 members) recompile nothing (Dynamo told to fail on any recompile: a fallback to eager
    would say so), and the members end where the eager population's end (1e-5)."""
    params, lines = {}, []
    torch._dynamo.reset()
    try:
        for mode in ("always", "never"):
            cfgs = configs(tmp_path / mode, "mtnet", members=HALVING, iterations=40,
                           **{"eval.val_tasks": 50, "train.compile": mode})
            dirs = [tmp_path / mode / c.run_name for c in cfgs]
            with torch._dynamo.config.patch(error_on_recompile=True), \
                    Population(cfgs, dirs, log=lines.append, scheduler=Halving(8, 2.0)) as pop:
                pop.train()
            params[mode] = [checkpoint.load(d)["params"] for d in dirs]
    finally:
        torch._dynamo.reset()  # no graph of this test counts against a later test's recompile limit
    assert not [line for line in lines if "compilation failed" in line], lines
    assert sum("shard function compiled" in line for line in lines) == 1
    for got, want in zip(params["always"], params["never"]):
        for k, v in want.items():
            torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)


PBT_MEMBERS = [{"alpha": a, "beta": b, "seed": i % 2} for i, (a, b) in enumerate(
    [(0.001, 0.001), (0.01, 0.002), (0.05, 0.001), (0.3, 0.003), (2.0, 0.001), (0.02, 0.001), (0.1, 0.0005),
     (0.005, 0.002)])]
BETAS = [0.0005, 0.001, 0.002, 0.003]


def test_pbt_exploits_copy_the_donors_state_bitwise_and_decide_the_same_way_twice(tmp_path):
    """8 MT-nets, 20 iterations, one PBT decision at 10 (quantile 0.25: 2 exploit), every member saving
    right after it. Checked from the records alone (metrics.jsonl's val_loss, Tune's `_quantiles` rule
    written out here): the exploited members are the 2 worst, each donor one of the 2 best; an exploited
    member's checkpoint at 10 equals its donor's bitwise (parameters, Adam moments, step count); its
    values are the donor's explored (alpha: resampled in range or times 0.8 / 1.2; beta: resampled from
    the list or one place left or right). The same population trained again takes the same decisions."""
    pbt = Pbt(10, 0.25, 0.25, (0.8, 1.2), {"alpha": {"loguniform": [1e-3, 1.0]}, "beta": {"choice": BETAS}}, (7, 0))
    lineages = []
    for name in ("first", "again"):
        cfgs = configs(tmp_path / name, "mtnet", members=PBT_MEMBERS, iterations=20,
                       **{"eval.val_tasks": 50, "train.checkpoint_every": 10})
        dirs = [tmp_path / name / c.run_name for c in cfgs]
        with Population(cfgs, dirs, log=lambda m: None, scheduler=pbt) as pop:
            results = pop.train()
        lineages.append([r.get("pbt", {}).get("lineage", []) for r in results])
    dirs = [tmp_path / "first" / f"m{i}" for i in range(len(PBT_MEMBERS))]
    decision = [next(e for e in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "val_loss" in e)
                for d in dirs]
    ranked = sorted(range(len(dirs)), key=lambda i: (decision[i]["val_loss"], i))
    worst, best = set(ranked[-2:]), {f"m{i}" for i in ranked[:2]}
    exploited = {i for i, lineage in enumerate(lineages[0]) if lineage}
    assert exploited == worst
    at_10 = [checkpoint.read(d / checkpoint.PREVIOUS_CHECKPOINT) for d in dirs]
    assert all(s["iteration"] == 10 for s in at_10)
    for i in exploited:
        (event,) = lineages[0][i]
        assert event["iteration"] == 10 and event["donor"] in best
        donor = int(event["donor"][1:])
        for k in at_10[i]["params"]:
            assert torch.equal(at_10[i]["params"][k], at_10[donor]["params"][k]), k
        mine, theirs = at_10[i]["optimizer"]["state"], at_10[donor]["optimizer"]["state"]
        for j in theirs:
            for part in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(mine[j][part], theirs[j][part]), (j, part)
        was = PBT_MEMBERS[donor]
        alpha, beta = event["new"]["alpha"], event["new"]["beta"]
        assert alpha in (was["alpha"] * 0.8, was["alpha"] * 1.2) or (event["ops"]["alpha"] == "resample"
                                                                     and 1e-3 <= alpha <= 1.0)
        assert beta in BETAS and (event["ops"]["beta"] == "resample"
                                  or abs(BETAS.index(beta) - BETAS.index(was["beta"])) <= 1)
        assert at_10[i]["hyperparams"] == {"alpha": alpha, "beta": beta, "gumbel_temperature": 1.0}
        assert decision[i]["alpha"] == alpha and decision[i]["exploit"] == event  # metrics.jsonl
    assert lineages[0] == lineages[1] and exploited


@needs_omniglot
def test_conv_members_on_omniglot_equal_their_solo_runs_and_an_image_sweep_packs(tmp_path):
    """An alpha / beta / temperature sweep of an Omniglot config packs (members stacked, as sine
    sweeps), and its conv4 MT-net members equal their solo runs (1e-5). Without batch norm: with it,
    a conv bias's meta-gradient is 0 up to rounding (batch norm removes the bias) and Adam scales
    that rounding to full steps, so members and solo runs part at ~1e-4 through float noise alone."""
    from pipeline.sweeps.spec import load_sweep

    sweep = tmp_path / "omniglot_alpha.yaml"
    sweep.write_text(f"base: omniglot_5w1s_cpu\noutput_dir: {tmp_path}\nspace:\n  alpha: {{grid: [0.1, 0.4]}}\n"
                     "  beta: {grid: [0.001, 0.003]}\n  gumbel_temperature: {grid: [0.5, 1.0]}\n")
    assert load_sweep(sweep).packed == ["alpha", "beta", "gumbel_temperature"]
    data = [str(OMNIGLOT / "images_background_small1.zip")]
    cfgs = [load_config("omniglot_5w1s_cpu", {
        "method": "mtnet", "task.data": data, "task.split": "character", "task.train_characters": 100,
        "task.query": 2, "model.filters": 8, "model.batch_norm": "none", "meta_batch_size": 4, "iterations": 12,
        "eval.tasks": 10,
        "train.compile": "never", "backend": "local", "tracking.enabled": False, "train.plots": False,
        "output_dir": str(tmp_path), "alpha": alpha, "beta": beta, "gumbel_temperature": temperature})
        for alpha, beta, temperature in ((0.1, 0.001, 1.0), (0.4, 0.003, 0.5))]
    logs = []
    with Population(cfgs, [tmp_path / f"pop{i}" for i in range(2)], log=logs.append) as pop:
        pop.train()
        members = [{k: v.clone() for k, v in m.params.items()} for m in pop.members]
    assert any(line.startswith("population: 2 members on cpu, ") for line in logs), logs
    for i, cfg in enumerate(cfgs):
        want, _ = solo(cfg, tmp_path / f"solo{i}")
        assert_rel_close(members[i], want, 1e-5, f"member {i}")
    assert members[0]["conv0.W"].shape == (8, 1, 3, 3) and not torch.equal(members[0]["conv0.W"],
                                                                            members[1]["conv0.W"])
