"""train.compile: which runs compile, by run length and method family (compilations themselves:
tests/integration)."""
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.driver.families import family_of


def compiles(cfg) -> bool:
    return family_of(cfg.method).compiles(cfg)


def test_compile_setting_resolves_by_run_length_and_family():
    assert not compiles(load_config("sine_quick"))  # 1,500 iterations: compiling would not pay
    assert compiles(load_config("sine_quick", ["iterations=60000"]))
    assert not compiles(load_config("sine_quick", ["iterations=60000", "train.compile=never"]))
    assert compiles(load_config("sine_quick", ["train.compile=always"]))
    with pytest.raises(ConfigError, match=r"^train.compile: unknown choice 'fast'; allowed: auto, always, never$"):
        load_config("sine_quick", ["train.compile=fast"])
    # learned optimizers: an iteration is an unroll of 20 LSTM steps, so compiling pays sooner
    assert compiles(load_config("l2l_quadratic_cpu"))  # 2,000 unrolls
    assert not compiles(load_config("l2l_quadratic_cpu", ["iterations=500"]))
    assert compiles(load_config("l2l_quadratic_cpu", ["iterations=500", "train.compile=always"]))
