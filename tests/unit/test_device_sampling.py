"""Tasks drawn with torch on a device (task.sample_on) against the numpy sampler.

Here the device is the CPU; the same torch code runs on CUDA (benchmarks/gpu_check.py compares
it there). What is promised: the generator's raw 32-bit words and every value derived from them by
exact arithmetic (uniforms, integers, permutations) are bitwise equal; values through log / cos /
sqrt (normal, logistic, and so sine targets) differ by at most 1 ulp of float32 once held as the
run's float32, because numpy's and torch's float64 transcendental functions may round the last
float64 bit differently.

The numpy sampler these tests compare with shares the generator's code (one philox4x32 with a
branch per array kind), so those comparisons check that the two paths agree; that the torch path is
Philox4x32-10 rests on Random123's known answers, checked on it directly (the first test)."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.driver.trainer import Trainer
from tasks import make_distribution, samples_on_device
from tasks.errors import ConfigError
from tasks.sampling import DATA_STREAM, NOISE_STREAM, Streams, philox4x32, sample_batch, sample_optimizees
from tests.unit.test_tasks import PHILOX_KAT

WRAP = 0xFFFFFFFF


def ulps32(a: np.ndarray, b: np.ndarray) -> int:
    """Largest distance in float32 units in the last place between two float arrays."""
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    ia, ib = a32.view(np.int32).astype(np.int64), b32.view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)  # sign-magnitude to a monotone integer line
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return int(np.abs(ia - ib).max())


@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT)
def test_torch_philox_matches_the_known_answer_vectors(counter, key, expected):
    words = philox4x32([torch.tensor([c]) for c in counter], [torch.tensor([k]) for k in key])
    assert [int(w[0]) for w in words] == list(expected)


def test_raw_words_are_bitwise_equal_for_10000_tuples_including_wrap_values():
    rng = np.random.default_rng(0)
    n = 10_000
    words = [rng.integers(0, 2**32, n, dtype=np.uint64) for _ in range(6)]
    for w in words:  # every word at its extremes too: 0, 2^32 - 1, and around 2^31 and 2^16
        w[:8] = [0, WRAP, WRAP - 1, 1, 2**31 - 1, 2**31, 2**16 - 1, 2**16]
    ours = philox4x32(words[:4], words[4:])
    theirs = philox4x32([torch.as_tensor(w.astype(np.int64)) for w in words[:4]],
                        [torch.as_tensor(w.astype(np.int64)) for w in words[4:]])
    for a, b in zip(ours, theirs):
        assert np.array_equal(a, b.numpy().astype(np.uint64))
    # through the streams: (seed, split, iteration, index) tuples, seeds and iterations beyond 32 bits
    # included (a population's validation tasks are iteration 2^63)
    seeds = np.concatenate([[0, WRAP, 2**32, 2**63 - 1], rng.integers(0, 2**40, n - 4)]).astype(np.uint64)
    iterations = words[1].copy()
    iterations[8:16] = [2**32, 2**32 + 1, 2**63, 2**63 + 5, 2**64 - 1, 2**48, WRAP * 7, 2**40 + 3]
    iterations[16:1000] = rng.integers(0, 2**64 - 1, 984, dtype=np.uint64)
    for split in ("train", "val", "test"):
        a = Streams(seeds, split, iterations, words[0], DATA_STREAM).random(6)
        b = Streams(seeds, split, iterations, words[0], DATA_STREAM, "cpu").random(6)
        assert isinstance(b, torch.Tensor) and b.dtype == torch.float64
        assert np.array_equal(a, b.numpy())
    # seeds, iterations and indices given as tensors (a compiled population step's traced draw):
    # the same words, where the iteration fits an int64 (training iterations do)
    fits = iterations < np.uint64(2**63)
    a = Streams(seeds[fits], "train", iterations[fits], words[0][fits], DATA_STREAM).random(6)
    as_long = lambda x: torch.as_tensor(x[fits].astype(np.int64))  # noqa: E731
    b = Streams(as_long(seeds), "train", as_long(iterations), as_long(words[0]), DATA_STREAM).random(6)
    assert fits.sum() > 9_000 and isinstance(b, torch.Tensor)
    assert np.array_equal(a, b.numpy())


def test_every_distribution_on_a_million_draws():
    args = ([5, 6], "train", 3, [0, 1], NOISE_STREAM)
    np_s, torch_s = Streams(*args), Streams(*args, device="cpu")
    half = 500_000
    for name, a in (("random", (half,)), ("integers", (7, half)), ("permutation", (50,))):
        x, y = getattr(np_s, name)(*a), getattr(torch_s, name)(*a)
        assert np.array_equal(x, y.numpy()), name
    for name in ("normal", "logistic", "random"):
        x, y = getattr(np_s, name)(half), getattr(torch_s, name)(half).numpy()
        differ = int((x != y).sum())
        assert ulps32(x, y) <= 1, name
        # float64: the last bit or two of a transcendental function, on few values
        assert np.abs(x - y).max() <= 4 * np.spacing(np.abs(x).max()) and differ < 0.2 * x.size, (name, differ)


TASK_SETS = {
    "sinusoid": {},
    "polynomial": {"task.order": 2},
    "synthetic_images": {"model.filters": 4, "task.image_size": 16},
}


@pytest.mark.parametrize("task", TASK_SETS)
def test_tasks_drawn_on_the_device_are_the_numpy_tasks(task):
    cfg = load_config(None, {"task.name": task, **TASK_SETS[task]})
    dist = make_distribution(cfg.task)
    kw = dict(seed=np.array([1, 2, 3]), split="train", iteration=np.array([0, 5, 9]), indices=[4, 0, 7], shots=5,
              query=3, noise_shapes={"l0.zeta": (6,)})
    cpu, dev = sample_batch(dist, **kw), sample_batch(dist, **kw, device="cpu", on_device=True)
    assert set(cpu) == set(dev)
    for key in cpu:
        a, b = (cpu[key]["l0.zeta"], dev[key]["l0.zeta"]) if key == "noise" else (cpu[key], dev[key])
        assert a.dtype == b.dtype and a.shape == b.shape, key
        if a.is_floating_point():
            assert ulps32(a.numpy(), b.numpy()) <= 1, key
        else:
            assert torch.equal(a, b), key


OMNIGLOT = Path(__file__).resolve().parents[3] / "shared/data/omniglot/images_background_small1.zip"


@pytest.mark.skipif(not OMNIGLOT.is_file(), reason="../shared/data/omniglot not found")
@pytest.mark.parametrize("sets", [{"task.rotations": True}, {"task.within_group": True},
                                  {"task.augment": "affine", "task.rotations": True},
                                  {"task.ways": 20, "task.device_cache_gb": 0}])
def test_omniglot_tasks_drawn_on_the_device_are_the_numpy_tasks(sets):
    """Classes, image orders and rotations drawn on the device; images gathered from the copy held
    there (or, with task.device_cache_gb 0, read on the CPU and copied): the same pixels, bitwise."""
    cfg = load_config(None, {"task.name": "omniglot", "task.data": [str(OMNIGLOT)], "task.train_characters": 100,
                             **sets})
    dist = make_distribution(cfg.task)
    for split in ("train", "test"):
        kw = dict(seed=np.array([3, 4]), split=split, iteration=2, indices=[0, 9], shots=2, query=3)
        cpu, dev = sample_batch(dist, **kw), sample_batch(dist, **kw, device="cpu", on_device=True)
        assert cpu["x_support"].shape == (2, cfg.task.ways * 2, 1, 28, 28)
        for key in ("x_support", "y_support", "x_query", "y_query"):
            assert torch.equal(cpu[key], dev[key]), (split, key)
    assert (("images", "cpu") in dist._cache) == (cfg.task.device_cache_gb > 0)


@pytest.mark.parametrize("task", ["quadratic", "mnist_mlp"])
def test_optimizees_drawn_on_the_device_are_the_numpy_optimizees(task):
    from tests.unit.test_learned_optimizer import MNIST_CSV

    if task == "mnist_mlp" and not MNIST_CSV.is_file():
        pytest.skip("../shared/data/mnist not found")
    cfg = load_config(None, {"method": "l2l", "task.name": task, "task.data": [str(MNIST_CSV)] * (task == "mnist_mlp"),
                             "model.hidden": [8]})
    dist = make_distribution(cfg.task, cfg.model)
    kw = dict(seed=0, split="test", iteration=2, indices=range(3), steps=4)
    cpu, dev = sample_optimizees(dist, **kw), sample_optimizees(dist, **kw, device="cpu", on_device=True)
    for key, a in cpu.items():
        if isinstance(a, torch.Tensor):
            b = dev[key]
            assert ulps32(a.numpy(), b.numpy()) <= 1 if a.is_floating_point() else torch.equal(a, b), key


def test_auto_draws_on_an_accelerator_only():
    sine = load_config(None, {}).task
    assert not samples_on_device(sine, "cpu") and samples_on_device(sine, "cuda")
    assert samples_on_device(load_config(None, {"task.sample_on": "device"}).task, "cpu")
    assert not samples_on_device(load_config(None, {"task.sample_on": "cpu"}).task, "cuda")


@pytest.mark.parametrize("sets, message", [
    ({"task.sample_on": "gpu"}, "task.sample_on: unknown choice 'gpu'; allowed: auto, cpu, device"),
    ({"task.device_cache_gb": -1}, "task.device_cache_gb: must be >= 0 (0 = gather images on the CPU), got -1.0"),
    ({"task.augment": "afine"}, "task.augment: unknown choice 'afine'; did you mean 'affine'? allowed: none, affine"),
])
def test_bad_sampling_settings_are_one_line(sets, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, sets)
    assert str(e.value) == message


@pytest.mark.parametrize("method", ["maml", "mtnet"])
def test_a_run_sampling_on_the_device_trains_as_the_numpy_run(tmp_path, method):
    """The same run with task.sample_on cpu and device (the CPU here): the same tasks up to 1 ulp of
    float32, so the meta-parameters after 20 iterations agree to float32 rounding."""
    def run(sample_on):
        cfg = load_config(None, {"method": method, "iterations": 20, "meta_batch_size": 4, "model.hidden": [16, 16],
                                 "backend": "local", "tracking.enabled": False, "task.sample_on": sample_on,
                                 "eval.tasks": 8, "eval.shots": [5], "train.compile": "never"})
        with Trainer(cfg, tmp_path / sample_on, log=lambda m: None) as trainer:
            trainer.train()
            return {k: v.detach().clone() for k, v in trainer.params.items()}

    cpu, dev = run("cpu"), run("device")
    for k in cpu:
        torch.testing.assert_close(dev[k], cpu[k], rtol=1e-5, atol=1e-6, msg=k)
    assert math.isfinite(sum(v.sum().item() for v in cpu.values()))


def test_a_population_draws_the_same_tasks_on_the_device():
    """A population's tasks (several seeds and iterations ahead in one draw) with task.sample_on cpu
    and device, and the member meta-gradients computed from them."""
    from pipeline.members import PopulationSpec
    from pipeline.shards.stacked import PopulationShards

    def shards(sample_on):
        cfgs = [load_config(None, {"method": "mtnet", "seed": seed, "alpha": alpha, "model.hidden": [8, 8],
                                   "task.sample_on": sample_on, "train.compile": "never"})
                for seed, alpha in ((0, 0.01), (1, 0.01), (0, 0.1))]
        return PopulationShards(PopulationSpec.from_configs(cfgs), log=lambda m: None)

    cpu, dev = shards("cpu"), shards("device")
    for iteration in (0, 3):
        a, b = cpu.sample(iteration, range(2, 6)), dev.sample(iteration, range(2, 6))
        for key in ("x_support", "y_support", "x_query", "y_query"):
            assert a[key].shape[:2] == (3, 4) and ulps32(a[key].numpy(), b[key].numpy()) <= 1, key
        assert torch.equal(a["x_support"][0], a["x_support"][2])  # members 0 and 2 share seed 0
    # the validation tasks (iteration 2^63: a counter word wider than 32 bits)
    stacked = {k: v.expand(3, *v.shape).clone() for k, v in cpu.experiment.init_params().items()}
    for got, want in zip(dev.validate(stacked, 6), cpu.validate(stacked, 6)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    params = {k: v.expand(3, *v.shape).clone() for k, v in cpu.experiment.init_params().items()}
    ga, gb = cpu.train_shard(params, 1, range(4)).grads, dev.train_shard(params, 1, range(4)).grads
    for k in ga:
        assert ga[k].shape[0] == 3 and ga[k].abs().sum() > 0
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-4, atol=1e-6)
