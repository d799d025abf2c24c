"""A random search's runs are drawn before Tune starts (pipeline/sweeps/draws.py): as Tune's own
variant generator draws them, the same every time, and grouped into populations when packed."""
import yaml
from ray.tune.experiment import Experiment
from ray.tune.search import BasicVariantGenerator

from pipeline.sweeps import draws
from pipeline.sweeps.spec import load_sweep


def sweep(tmp_path, space, **fields):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "sine_quick", "space": space, **fields}))
    return load_sweep(path)


SPACE = {"method": {"grid": ["maml", "mtnet"]}, "alpha": {"loguniform": [0.001, 0.1]},
         "gumbel_temperature": {"uniform": [0.5, 2.0]}, "seed": {"grid": [0, 1, 2]}}


def tunes_own_draws(s) -> list[dict]:
    """What Tune's BasicVariantGenerator, seeded as the sweep, hands its trials (no Ray started)."""
    gen = BasicVariantGenerator(random_state=s.spec.seed)
    gen.add_configurations([Experiment("x", lambda config: None, config=draws.tune_space(s.space),
                                       num_samples=s.spec.num_samples)])
    out = []
    while (trial := gen.next_trial()) is not None:
        out.append({k: trial.config[k] for k in s.space})
    return out


def test_the_runs_are_tunes_own_draws_and_the_same_every_time(tmp_path):
    s = sweep(tmp_path, SPACE, num_samples=4, seed=5)
    got = draws.draw(s)
    assert got == tunes_own_draws(s) and got == draws.draw(s)
    assert len(got) == 4 * 2 * 3 == s.trial_count()
    assert len({d["alpha"] for d in got}) == len(got)  # fresh draws for every run
    assert all(0.001 <= d["alpha"] <= 0.1 and 0.5 <= d["gumbel_temperature"] <= 2.0 for d in got)
    for p in range(4):  # each pass over the grid holds every grid combination once
        assert sorted((d["method"], d["seed"]) for d in got[6 * p:6 * p + 6]) == sorted(
            (m, seed) for m in ("maml", "mtnet") for seed in (0, 1, 2))
    assert draws.draw(sweep(tmp_path, SPACE, num_samples=4, seed=6)) != got


def test_packed_runs_form_populations_per_unpacked_value_in_grid_order(tmp_path):
    s = sweep(tmp_path, SPACE, num_samples=4, seed=5, pack={"max_members": 5})
    assert s.packed == ["alpha", "gumbel_temperature", "seed"]
    trials, runs = draws.trials(s), draws.draw(s)
    assert [t["method"] for t in trials] == ["maml"] * 3 + ["mtnet"] * 3  # 12 runs per method: 4 + 4 + 4
    assert [len(t["members"]) for t in trials] == [4] * 6
    for method in ("maml", "mtnet"):
        members = [m for t in trials if t["method"] == method for m in t["members"]]
        drawn = [{k: d[k] for k in s.packed} for d in runs if d["method"] == method]
        assert sorted(map(str, members)) == sorted(map(str, drawn))  # every run once, nothing else
        assert [m["seed"] for m in members] == sorted(m["seed"] for m in members)  # the grid key's order
    unpacked = sweep(tmp_path, SPACE, num_samples=4, seed=5, pack={"max_members": 0})
    assert not unpacked.packed and draws.trials(unpacked) == runs  # one Tune trial per drawn run


def test_a_sampled_key_outside_the_packable_ones_leaves_the_sweep_unpacked(tmp_path):
    s = sweep(tmp_path, {**SPACE, "inner_steps": {"randint": [1, 3]}})
    assert not s.packed and s.unpacked_because.startswith("space.inner_steps is sampled and not packable")


def test_the_tune_space_picks_each_trials_configuration_by_its_index(tmp_path):
    from ray.tune.search.sample import _BackwardsCompatibleNumpyRng
    from ray.tune.search.variant_generator import generate_variants

    configs = draws.trials(sweep(tmp_path, SPACE, seed=2, pack={"max_members": 2}))
    resolved = [spec["config"] for _, spec in generate_variants({"config": draws.param_space(configs)},
                                                                 random_state=_BackwardsCompatibleNumpyRng(0))]
    assert [{k: v for k, v in r.items() if k != draws.DRAW} for r in resolved] == configs
