"""train.compile: which runs compile, by run length and method family (compilations themselves:
tests/integration)."""
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.driver.families import family_of


def compiles(cfg) -> bool:
    return family_of(cfg.method).plan(cfg).compile


def test_compile_setting_resolves_by_run_length_and_family():
    assert not compiles(load_config("sine_quick"))  # 1,500 iterations: compiling would not pay
    assert compiles(load_config("sine_quick", ["iterations=60000"]))
    assert not compiles(load_config("sine_quick", ["iterations=60000", "train.compile=never"]))
    assert compiles(load_config("sine_quick", ["train.compile=always"]))
    assert compiles(load_config("sine_quick", ["train.compile=graphs"]))  # compiled, CUDA graphs on a GPU
    with pytest.raises(ConfigError, match=r"^train.compile: unknown choice 'fast'; allowed: auto, always, never, "
                       "graphs$"):
        load_config("sine_quick", ["train.compile=fast"])
    # learned optimizers: an iteration is an unroll of 20 LSTM steps, so compiling pays sooner
    assert compiles(load_config("l2l_quadratic_cpu"))  # 2,000 unrolls
    assert not compiles(load_config("l2l_quadratic_cpu", ["iterations=500"]))
    assert compiles(load_config("l2l_quadratic_cpu", ["iterations=500", "train.compile=always"]))


def test_the_learners_mse_gives_f_mse_loss_bit_for_bit_in_eager():
    """The learners compute MSE as (out - y).square().mean(), not F.mse_loss (whose batching rule fixes
    a population's member count in a compiled graph): the same value and gradient to the last bit,
    so eager runs are unchanged by it."""
    import torch
    import torch.nn.functional as F

    from pipeline.core.learners import Network, loss_and_metric

    gen = torch.Generator().manual_seed(0)
    net = Network(cells=(), loss="mse")
    for n in (1, 5, 10, 20, 50, 100, 1000, 4097):
        for _ in range(20):
            out = torch.randn(n, 1, generator=gen, requires_grad=True)
            y = torch.randn(n, 1, generator=gen)
            want = F.mse_loss(out, y)
            got = loss_and_metric(net, {}, out, y)[0]  # a network without cells: its output is its input
            assert torch.equal(got, want), n
            assert torch.equal(torch.autograd.grad(got, out)[0], torch.autograd.grad(want, out)[0]), n


def test_the_execution_plan_docstring_example_holds():
    import doctest

    from pipeline.shards import compiled

    assert doctest.testmod(compiled).failed == 0
