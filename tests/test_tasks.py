"""Task distributions: ranges, the pure-function sampling contract, independence of streams."""
import numpy as np
import pytest
import torch

from tasks.regression import Polynomial, Sinusoid
from tasks.sampling import sample_batch, task_rng

NOISE = {"l0.zeta": (40,), "l1.zeta": (40,)}


def batch(dist, indices, shots=10, seed=3, iteration=5, split="train"):
    return sample_batch(dist, seed=seed, split=split, iteration=iteration, indices=indices, shots=shots, query=10,
                        noise_shapes=NOISE, dtype=torch.float64)


def test_sinusoid_follows_its_definition():
    b = batch(Sinusoid(), range(500))
    amp, freq, phase = b["coeffs"].T
    assert amp.min() >= 0.1 and amp.max() <= 5.0 and amp.max() > 4.8
    assert freq.min() >= 0.8 and freq.max() <= 1.2
    assert phase.min() >= 0 and phase.max() <= np.pi
    x = torch.cat([b["x_support"], b["x_query"]], 1)
    assert x.min() >= -5 and x.max() <= 5 and x.min() < -4.9
    assert b["x_support"].shape == (500, 10, 1) and b["x_query"].shape == (500, 10, 1)
    expected = amp[:, None, None] * torch.sin(freq[:, None, None] * b["x_support"] + phase[:, None, None])
    torch.testing.assert_close(b["y_support"], expected)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_polynomial_has_the_right_order(order):
    b = batch(Polynomial(order), range(50), shots=8)
    assert b["coeffs"].shape == (50, order + 1)
    assert b["coeffs"].abs().max() <= 1
    for i in range(50):
        x, y = b["x_support"][i, :, 0].numpy(), b["y_support"][i, :, 0].numpy()
        fit = np.polynomial.polynomial.polyfit(x, y, order)
        np.testing.assert_allclose(fit, b["coeffs"][i].numpy(), atol=1e-8)


def test_sampling_is_a_pure_function_of_seed_split_iteration_index():
    full = batch(Sinusoid(), range(8))
    again = batch(Sinusoid(), range(8))
    shards = [batch(Sinusoid(), r) for r in (range(0, 3), range(3, 5), range(5, 8))]
    for key in ("x_support", "y_support", "x_query", "y_query"):
        assert torch.equal(full[key], again[key])
        assert torch.equal(full[key], torch.cat([s[key] for s in shards]))
    for name in NOISE:
        assert torch.equal(full["noise"][name], torch.cat([s["noise"][name] for s in shards]))
    # Any change of seed, split, iteration or index gives another task.
    for other in (batch(Sinusoid(), range(8), seed=4), batch(Sinusoid(), range(8), iteration=6),
                  batch(Sinusoid(), range(8), split="test"), batch(Sinusoid(), range(1, 9))):
        assert not torch.isclose(full["x_query"], other["x_query"]).all(dim=1).any()


def test_task_and_noise_do_not_depend_on_shots():
    five, twenty = batch(Sinusoid(), range(4), shots=5), batch(Sinusoid(), range(4), shots=20)
    assert torch.equal(five["coeffs"], twenty["coeffs"])
    assert torch.equal(five["x_query"], twenty["x_query"])
    assert torch.equal(five["noise"]["l0.zeta"], twenty["noise"]["l0.zeta"])


def test_task_streams_are_independent():
    a = task_rng(0, "train", 0, 0, 0).random(1000)
    b = task_rng(0, "train", 0, 0, 1).random(1000)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.1
