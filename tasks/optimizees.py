"""Optimizee distributions for learned optimizers (Andrychowicz et al. 2016; DESIGN section 2).

An optimizee is a problem f(theta) with a flat parameter vector theta of `dim` coordinates, drawn
like every task here from its own generator (a pure function of seed, split, iteration, index: see
tasks/sampling.py). `sample` returns numpy arrays: the initial theta and what defines f (W and y;
or the MLP's minibatch indices, one row per optimizee step). `loss(theta, problem, t)` is the loss
the optimizer sees at step t, batched over a leading optimizee dimension B; `final_loss` is the
loss a result table reports after the last step, and `unseen_loss` (None where a problem has no
such notion) the loss on data the optimizee never trained on.

With `heldout` (train.meta_loss: heldout), each training and validation optimizee also draws data
it never trains on, after everything else it draws (so a quadratic's training data stay those of
the default), `meta_loss(theta, problem, t)` is the loss on that data - the meta-objective's term
f_t (Metz et al. 2019) - and `unseen_loss` its loss there after the last step, which validation
selects by. Test optimizees, and every problem without held-out data, take `loss` as the meta-loss.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tasks.errors import ConfigError
from tasks.sampling import Streams

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu}
HELDOUT_SPLITS = ("train", "val")  # heldout: the optimizees that draw data they never train on
INIT_STD = 0.01  # theta_0 ~ N(0, 0.01^2) for both problems, as the paper's reference code


UNSEEN_POINTS = 20  # the unseen-data curve's resolution: its loss at 21 evenly spaced steps


def unseen_steps(steps: int) -> list[int]:
    """The steps 0..steps at which evaluation scores optimizees on data they never train on."""
    return sorted({round(i * steps / UNSEEN_POINTS) for i in range(UNSEEN_POINTS + 1)})


class Quadratic:
    """f(theta) = ||W theta - y||^2, W (d x d) and y (d) with i.i.d. N(0, 1) entries."""

    loss_name = "quadratic loss"

    def __init__(self, dim: int = 10, heldout: bool = False):
        self.d = dim
        self.dim = dim
        self.heldout = heldout

    def sample(self, streams: Streams, steps: int, split: str = "train") -> dict:
        problem = {"W": streams.normal((self.d, self.d)), "y": streams.normal(self.d),
                   "theta0": INIT_STD * streams.normal(self.d)}
        if self.heldout and split in HELDOUT_SPLITS:
            # held out: another draw of W around the same optimum theta* = W^-1 y (y' = W' theta*):
            # the held-out loss measures the distance to the solution, not W's particular curvature
            xp, w = streams.xp, streams.normal((self.d, self.d))
            optimum = xp.linalg.solve(problem["W"], problem["y"][..., None])
            problem["W_heldout"], problem["y_heldout"] = w, (w @ optimum)[..., 0]
        return problem

    def loss(self, theta: torch.Tensor, problem: dict, t: int) -> torch.Tensor:
        return self._residual(theta, problem["W"], problem["y"])

    def meta_loss(self, theta: torch.Tensor, problem: dict, t: int) -> torch.Tensor:
        if "W_heldout" not in problem:
            return self.loss(theta, problem, t)
        return self._residual(theta, problem["W_heldout"], problem["y_heldout"])

    @staticmethod
    def _residual(theta: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r = (w @ theta.unsqueeze(-1)).squeeze(-1) - y
        return r.pow(2).sum(-1)

    def final_loss(self, theta: torch.Tensor, problem: dict, t: int) -> torch.Tensor:
        return self.loss(theta, problem, t)

    def unseen_loss(self, theta: torch.Tensor, problem: dict) -> torch.Tensor | None:
        # the held-out objective where drawn; a quadratic has no data beyond W and y otherwise
        return self.meta_loss(theta, problem, 0) if "W_heldout" in problem else None


class MnistMLP:
    """Cross-entropy of an MLP (784 - hidden - 10, `activation` after each hidden layer) on a fresh
    minibatch of `minibatch` MNIST images at every step; theta_0 ~ N(0, 0.01^2) (weights and biases).

    Splits: the training split's optimizees see the training images (so do the validation split's,
    with streams of their own), the test split's the held-out images (CSV subset: every fifth image
    is held out, 4,000 / 1,000; torchvision root: the 60,000 / 10,000 MNIST sets).

    `final_loss` is the loss on a fixed stratified subset of the images the optimizee trains on: the
    first EVAL_PER_DIGIT images of each digit (the CSV is sorted by label, so a plain "first 1,000"
    would be digits 0-2 only). `unseen_loss`, for test optimizees, is the loss on the same kind of
    subset of the training images, which they never see; validation and training optimizees have
    no unseen images here (the test images stay untouched until the test)."""

    loss_name = "cross-entropy"
    EVAL_PER_DIGIT = 100
    HELDOUT_FRACTION = 0.2  # heldout: the share of the training images an optimizee never trains on

    def __init__(self, data: str, hidden: list[int], activation: str = "sigmoid", minibatch: int = 128,
                 dtype=torch.float32, heldout: bool = False, own_images: int = 0):
        self.data, self.minibatch, self.act, self.heldout = data, minibatch, ACTIVATIONS[activation], heldout
        self.sizes = [784, *hidden, 10]
        self.shapes = [s for a, b in zip(self.sizes[:-1], self.sizes[1:]) for s in ((a, b), (b,))]
        self.dim = sum(math.prod(s) for s in self.shapes)
        self.images = {split: load_mnist(data, split) for split in ("train", "test")}
        self.scored = {pool: stratified(y, self.EVAL_PER_DIGIT) for pool, (_, y) in self.images.items()}
        self._tensors = {}
        n = len(self.images["train"][1])
        if own_images and not 0 < own_images < n:
            raise ConfigError(f"task.optimizee_images: must be below the {n} training images of {data} (an "
                              f"optimizee's own draw, the rest its held-out data), got {own_images}")
        self.own_images = own_images

    def sample(self, streams: Streams, steps: int, split: str = "train") -> dict:
        n = len(self.images[self.pool(split)][1])
        theta0 = INIT_STD * streams.normal(self.dim)
        own = self.own_images if split in HELDOUT_SPLITS else 0
        if not (own or self.heldout and split in HELDOUT_SPLITS):
            return {"theta0": theta0, "batches": streams.integers(n, (steps + 1, self.minibatch))}
        # a per-optimizee split of the training images (a random permutation): its first `held` are
        # held out (heldout: the rest of the images beyond its own draw, or HELDOUT_FRACTION of them),
        # the next `size` (task.optimizee_images, or all the others) the ones it trains on; minibatches
        # of each part at every step
        xp = streams.xp
        held = (n - own if own else int(n * self.HELDOUT_FRACTION)) if self.heldout else 0
        size = own or n - held
        order = streams.permutation(n)  # (B, n)
        shape = (steps + 1, self.minibatch)

        def batches(part, size):
            pos = streams.integers(size, shape)  # (B, steps + 1, minibatch) positions in the part
            return xp.reshape(xp.take_along_axis(part, xp.reshape(pos, (pos.shape[0], -1)), axis=1), pos.shape)

        problem = {"theta0": theta0, "batches": batches(order[:, held:held + size], size)}
        if self.heldout:
            problem |= {"heldout_batches": batches(order[:, :held], held), "heldout_images": order[:, :held]}
        return problem

    @staticmethod
    def pool(split: str) -> str:
        """The images a split's optimizees see: validation optimizees ("val") the training images."""
        return "test" if split == "test" else "train"

    def _data(self, split: str, dtype, device):
        key = (self.pool(split), dtype, str(device))
        if key not in self._tensors:
            x, y = self.images[key[0]]
            self._tensors[key] = (torch.as_tensor(x, device=device).to(dtype) / 255.0,
                                  torch.as_tensor(y, dtype=torch.long, device=device))
        return self._tensors[key]

    def unflatten(self, theta: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for s in self.shapes:
            n = math.prod(s)
            out.append(theta[..., start:start + n].reshape(*theta.shape[:-1], *s))
            start += n
        return out

    def _xent(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy per optimizee: theta (B, n), x (B or 1, m, 784), y (B or 1, m) -> (B,)."""
        parts = self.unflatten(theta)
        h = x
        for i in range(0, len(parts), 2):
            h = h @ parts[i] + parts[i + 1].unsqueeze(-2)
            if i < len(parts) - 2:
                h = self.act(h)
        y = y.expand(h.shape[:-1])
        return F.cross_entropy(h.flatten(0, -2), y.flatten(), reduction="none").view(y.shape).mean(-1)

    def _images_loss(self, theta: torch.Tensor, split: str, idx: torch.Tensor) -> torch.Tensor:
        """Each optimizee's loss on its own images: idx (B, m) image numbers of the split's pool."""
        x, y = self._data(split, theta.dtype, theta.device)
        return self._xent(theta, x[idx], y[idx])

    def loss(self, theta: torch.Tensor, problem: dict, t: int) -> torch.Tensor:
        return self._images_loss(theta, problem["split"], problem["batches"][:, t])  # (B, minibatch)

    def meta_loss(self, theta: torch.Tensor, problem: dict, t: int) -> torch.Tensor:
        if "heldout_batches" not in problem:
            return self.loss(theta, problem, t)
        return self._images_loss(theta, problem["split"], problem["heldout_batches"][:, t])

    def final_loss(self, theta: torch.Tensor, problem: dict, t: int) -> torch.Tensor:
        return self._scored_loss(theta, problem["split"])

    def unseen_loss(self, theta: torch.Tensor, problem: dict) -> torch.Tensor | None:
        if "heldout_images" in problem:  # every one of the optimizee's held-out images
            return self._images_loss(theta, problem["split"], problem["heldout_images"])
        return self._scored_loss(theta, "train") if problem["split"] == "test" else None

    def _scored_loss(self, theta: torch.Tensor, split: str) -> torch.Tensor:
        x, y = self._data(split, theta.dtype, theta.device)
        idx = torch.as_tensor(self.scored[self.pool(split)], device=x.device)
        return self._xent(theta, x[idx][None], y[idx][None])


class RandomlyScaled:
    """An optimizee distribution whose training optimizees are seen through a random per-coordinate
    scale (Lv et al. 2017, "random scaling"): the optimizer steps x, the problem is f(c * x), with
    c = exp(u), u ~ U(-log_range, log_range) per coordinate, drawn from each optimizee's stream after
    everything else it draws, and x_0 = theta_0 / c, so the optimizee starts where it would. The
    gradient the optimizer reads is c * grad f(c * x): the problem's conditioning changes from one
    optimizee to the next. Other splits are the distribution's own."""

    def __init__(self, base, log_range: float):
        self.base, self.log_range = base, log_range

    def __getattr__(self, name):  # loss_name, dim, images, ...: the distribution's
        return getattr(self.base, name)

    def sample(self, streams: Streams, steps: int, split: str = "train") -> dict:
        problem = self.base.sample(streams, steps, split)
        if split == "train":
            scale = streams.xp.exp((2.0 * streams.random(self.base.dim) - 1.0) * self.log_range)
            problem["scale"], problem["theta0"] = scale, problem["theta0"] / scale
        return problem

    @staticmethod
    def _theta(x: torch.Tensor, problem: dict) -> torch.Tensor:
        return x * problem["scale"] if "scale" in problem else x

    def loss(self, x, problem, t):
        return self.base.loss(self._theta(x, problem), problem, t)

    def meta_loss(self, x, problem, t):
        return self.base.meta_loss(self._theta(x, problem), problem, t)

    def final_loss(self, x, problem, t):
        return self.base.final_loss(self._theta(x, problem), problem, t)

    def unseen_loss(self, x, problem):
        return self.base.unseen_loss(self._theta(x, problem), problem)


def stratified(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` images of each class, in the pool's order."""
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))


@functools.lru_cache(maxsize=4)
def load_mnist(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 784), labels int64 (N,)) of one split, from the 5,000-image CSV (784 pixel
    columns then the label, no header; .csv or .csv.gz) or a torchvision MNIST root."""
    p = Path(path)
    if p.is_file():
        try:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(p, read_options=pcsv.ReadOptions(autogenerate_column_names=True))
            arr = np.stack([c.to_numpy() for c in table.columns], 1)
        except Exception as e:  # noqa: BLE001 - any unreadable file is one line naming it
            raise ConfigError(f"task.data: {p} is not a readable MNIST CSV ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
        if arr.ndim != 2 or arr.shape[1] != 785:
            raise ConfigError(f"task.data: {p} must have 785 columns (784 pixels, then the label), got {arr.shape[1:]}")
        held_out = np.arange(len(arr)) % 5 == 4
        rows = arr[held_out] if split == "test" else arr[~held_out]
        return rows[:, :784].astype(np.uint8), rows[:, 784].astype(np.int64)
    try:
        from torchvision.datasets import MNIST

        ds = MNIST(str(p), train=split == "train", download=False)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"task.data: {p} is neither an MNIST CSV file nor a torchvision MNIST root "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return ds.data.reshape(len(ds.data), 784).numpy(), ds.targets.numpy().astype(np.int64)
