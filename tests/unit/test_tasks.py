"""Task distributions: ranges, the pure-function sampling contract, independence of streams, the
counter-based generator against its known answers and its distributions."""
import math

import numpy as np
import pytest
import torch

from tasks.regression import Polynomial, Sinusoid
from tasks.sampling import DATA_STREAM, NOISE_STREAM, Streams, philox4x32, sample_batch

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
    a = Streams(0, "train", 0, [0], DATA_STREAM).random(1000)[0]
    b = Streams(0, "train", 0, [0], NOISE_STREAM).random(1000)[0]
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.1


# Random123's known-answer vectors for Philox4x32-10 (its kat_vectors file): counter, key, output.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT)
def test_philox_matches_the_known_answer_vectors(counter, key, expected):
    assert [int(w) for w in philox4x32(counter, key)] == list(expected)
    # elementwise over arrays: the same words wherever a counter sits in a batch
    batch = philox4x32([np.array([c, 1, c]) for c in counter], key)
    assert [int(w[0]) for w in batch] == [int(w[2]) for w in batch] == list(expected)


def ks_distance(sample: np.ndarray, cdf) -> float:
    """Kolmogorov-Smirnov statistic of a sample against a CDF."""
    x = np.sort(sample)
    f = cdf(x)
    n = len(x)
    return float(max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max()))


N_KS = 40000
KS_LIMIT = 1.95 / math.sqrt(N_KS)  # the 0.1% critical value


def test_streams_draw_from_the_stated_distributions():
    streams = Streams([3, 4], "train", 7, [0, 1], DATA_STREAM)
    u = streams.random(N_KS // 2).ravel()
    assert 0 < u.min() and u.max() < 1
    assert ks_distance(u, lambda x: x) < KS_LIMIT
    z = streams.normal(N_KS // 2).ravel()
    assert ks_distance(z, lambda x: 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))) < KS_LIMIT
    g = streams.logistic(N_KS // 2).ravel()
    assert ks_distance(g, lambda x: 1 / (1 + np.exp(-x))) < KS_LIMIT
    k = streams.integers(7, N_KS // 2).ravel()
    counts = np.bincount(k, minlength=7)
    assert len(counts) == 7 and (abs(counts / len(k) - 1 / 7) < 4 * math.sqrt(1 / 7 / len(k))).all()
    perms = Streams(0, "train", 0, range(6000), DATA_STREAM).permutation(4)
    assert (np.sort(perms, 1) == np.arange(4)).all()
    # every one of the 24 orders about equally often
    codes = np.unique(perms @ (4 ** np.arange(4)), return_counts=True)[1]
    assert len(codes) == 24 and (abs(codes / 6000 - 1 / 24) < 4 * math.sqrt(1 / 24 / 6000)).all()


def test_consecutive_values_and_neighbouring_tasks_are_uncorrelated():
    u = Streams(np.repeat([0, 1], 500), "train", 0, np.tile(np.arange(500), 2), DATA_STREAM).random(400)
    lag = np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]
    tasks = np.corrcoef(u[:-1].ravel(), u[1:].ravel())[0, 1]  # task i and i + 1, and seed 0 and 1
    assert abs(lag) < 0.01 and abs(tasks) < 0.01


def test_a_batch_of_several_seeds_equals_each_seeds_batch():
    """A population draws all its members' tasks in one call: task i of seed s is the same task."""
    seeds = np.repeat([3, 11], 4)
    both = sample_batch(Sinusoid(), seed=seeds, split="train", iteration=5, indices=np.tile(range(4), 2), shots=10,
                        query=10, noise_shapes=NOISE, dtype=torch.float64)
    for j, seed in enumerate((3, 11)):
        alone = batch(Sinusoid(), range(4), seed=seed)
        for key in ("x_support", "y_support", "x_query", "y_query"):
            assert torch.equal(both[key][4 * j:4 * j + 4], alone[key])
        assert torch.equal(both["noise"]["l1.zeta"][4 * j:4 * j + 4], alone["noise"]["l1.zeta"])


def test_a_batch_of_several_iterations_equals_each_iterations_batch():
    """A population draws several iterations' tasks ahead in one call: task i of iteration t (of
    seed s) is the same task as in the batch of iteration t alone."""
    its, seeds = np.repeat([5, 6, 90], 8), np.tile(np.repeat([3, 11], 4), 3)
    ahead = sample_batch(Sinusoid(), seed=seeds, split="train", iteration=its, indices=np.tile(range(4), 6), shots=10,
                         query=10, noise_shapes=NOISE, dtype=torch.float64)
    for j, (it, seed) in enumerate(zip(its[::4], seeds[::4])):
        alone = sample_batch(Sinusoid(), seed=int(seed), split="train", iteration=int(it), indices=range(4), shots=10,
                             query=10, noise_shapes=NOISE, dtype=torch.float64)
        for key in ("x_support", "y_support", "x_query", "y_query"):
            assert torch.equal(ahead[key][4 * j:4 * j + 4], alone[key])
        assert torch.equal(ahead["noise"]["l1.zeta"][4 * j:4 * j + 4], alone["noise"]["l1.zeta"])
    assert not torch.equal(ahead["x_query"][:4], ahead["x_query"][8:12])  # iterations 5 and 6 differ
