"""Populations (pipeline/driver/population.py) without training: the functional per-member update
equals torch.optim.Adam itself (eager and compiled), and members that differ in structure are
one-line errors (members trained as one program against their solo runs: tests/integration)."""
import math

import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.driver.meta_step import StackedAdam
from pipeline.driver.stacked_runs import check_packable
from pipeline.yaml_dataclasses import to_dict

from helpers import configs


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_functional_adam_equals_torch_adam_per_member(compile):
    """The population's update (eager, and as one compiled kernel) against one torch.optim.Adam per
    member (its own lr) fed the mean gradient of n tasks, with a member skipping some steps (not
    running, or a non-finite loss or gradient: no update, no step count)."""
    torch.manual_seed(0)
    P, n, betas = 3, 4, [1e-3, 3e-2, 0.2]
    init = {"w": torch.randn(P, 5, 4), "b": torch.randn(P, 4)}
    logs = []
    adam = StackedAdam(init, torch.tensor(betas, dtype=torch.float64), compile=compile, log=logs.append)
    ref = [{k: v[i].clone().requires_grad_(True) for k, v in init.items()} for i in range(P)]
    opts = [torch.optim.Adam(list(r.values()), lr=b) for r, b in zip(ref, betas)]
    for step in range(30):
        grads = {k: torch.randn_like(v) * (1 + step) * n for k, v in init.items()}  # sums over n tasks
        loss = torch.ones(P)
        running = torch.tensor([True, step % 3 != 0, True])
        if step % 5 == 4:  # member 2: a non-finite loss, then a non-finite gradient
            loss[2] = math.nan
        if step % 5 == 2:
            grads["w"][2, 0, 0] = math.inf
        finite = adam.step(grads, loss, n, running)
        assert finite.tolist() == [True, True, step % 5 not in (2, 4)]
        for i in range(P):
            if running[i] and finite[i]:
                for k, p in ref[i].items():
                    p.grad = grads[k][i].clone() / n
                opts[i].step()
    for i in range(P):
        for k, p in ref[i].items():
            torch.testing.assert_close(adam.params[k][i], p.detach(), rtol=1e-6, atol=1e-7)
            assert adam.params[k].untyped_storage().data_ptr() == adam.flat.untyped_storage().data_ptr()  # views
    assert adam.steps.tolist() == [30, 20, 18]
    # compiled once and said once; no fallback to eager
    assert [m.split(" in ")[0] for m in logs] == (["train.compile: Adam update compiled"] if compile else [])


def test_members_that_differ_in_structure_are_one_line_errors(tmp_path):
    cfgs = configs(tmp_path, "maml", iterations=10)
    cfgs[1] = load_config(to_dict(cfgs[1]), ["meta_batch_size=8"])
    with pytest.raises(ConfigError, match=r"^population: member 1 differs from member 0 in meta_batch_size \(8 vs 4\);"
                                          r" members may differ only in alpha, beta, gumbel_temperature, seed"):
        check_packable(cfgs)
    with pytest.raises(ConfigError, match="learned optimizers train one run at a time"):
        check_packable([load_config("l2l_quadratic_cpu")] * 2)


def test_a_population_spec_is_the_shared_config_and_a_member_table(tmp_path):
    """PopulationSpec (pipeline/members.py): each member's config comes back whole from the base and
    its row; schedulers change rows (MUTABLE keys only); a selection and the wire form keep rows."""
    import doctest

    from pipeline import members as members_module
    from pipeline.members import PopulationSpec

    cfgs = [load_config("sine_quick", {"alpha": a, "beta": b, "seed": s, "run_name": f"m{s}",
                                       "output_dir": str(tmp_path)})
            for a, b, s in ((0.01, 1e-3, 0), (0.1, 2e-3, 1), (0.3, 1e-3, 2))]
    spec = PopulationSpec.from_configs(cfgs)
    assert [to_dict(spec.config(i)) for i in range(3)] == [to_dict(c) for c in cfgs]
    assert spec.column("alpha") == [0.01, 0.1, 0.3] and spec.values(1) == {
        "alpha": 0.1, "beta": 2e-3, "gumbel_temperature": cfgs[1].gumbel_temperature}
    spec.set_values(2, {"alpha": 0.5, "beta": 4e-3, "seed": 99})  # a non-mutable key is not a value
    assert spec.config(2).alpha == 0.5 and spec.config(2).beta == 4e-3 and spec.config(2).seed == 2
    assert cfgs[2].alpha == 0.3  # the members' configs are not written
    picked = spec.select([2, 0])
    assert picked.column("seed") == [2, 0] and picked.base is spec.base
    back = PopulationSpec.from_wire(picked.to_wire())
    assert back.rows == picked.rows and to_dict(back.base) == to_dict(spec.base)
    assert doctest.testmod(members_module).failed == 0
