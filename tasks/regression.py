"""Regression task distributions of the thesis (DESIGN section 3): sinusoids and polynomials."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tasks.sampling import Streams


class _Regression:
    """y = f(x; task coefficients), x ~ U[x_range]; subclasses draw coefficients and define f."""

    def sample(self, streams: Streams, shots: int, query: int, split: str = "train") -> dict:
        """A batch of tasks, one per stream: arrays (N, ...)."""
        # Order matters: task parameters, then query, then support. The task and its query set
        # stay the same whatever K is, so one evaluation set serves every K in the list.
        coeffs = self.draw(streams)
        xq = streams.uniform(*self.x_range, (query, 1))
        xs = streams.uniform(*self.x_range, (shots, 1))
        return {"x_support": xs, "y_support": self.target(coeffs, xs, streams.xp),
                "x_query": xq, "y_query": self.target(coeffs, xq, streams.xp), "coeffs": coeffs}


@dataclass(frozen=True)
class Sinusoid(_Regression):
    """y = A sin(w x + b), A ~ U[0.1, 5], w ~ U[0.8, 1.2], b ~ U[0, pi], x ~ U[-5, 5]."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    frequency: tuple[float, float] = (0.8, 1.2)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    input_dim: int = 1
    output_dim: int = 1
    loss: str = "mse"

    def draw(self, streams: Streams):
        u = streams.random(3)
        return streams.xp.stack([low + (high - low) * u[:, i]
                                 for i, (low, high) in enumerate((self.amplitude, self.frequency, self.phase))], axis=1)

    @staticmethod
    def target(coeffs, x, xp=np):
        """coeffs (N, 3), x (N, n, 1): arrays of the namespace xp (numpy, or array-api-compat's torch)."""
        amplitude, frequency, phase = (coeffs[:, i, None, None] for i in range(3))
        return amplitude * xp.sin(frequency * x + phase)


@dataclass(frozen=True)
class Polynomial(_Regression):
    """y = sum_{i<=n} c_i x^i with c_i ~ U[-1, 1] (DESIGN section 3), order n in {0, 1, 2}.

    DESIGN does not fix the input range; x ~ U[-2, 2] follows the MT-net reference generator."""

    order: int = 2
    x_range: tuple[float, float] = (-2.0, 2.0)
    input_dim: int = 1
    output_dim: int = 1
    loss: str = "mse"

    def draw(self, streams: Streams):
        return streams.uniform(-1.0, 1.0, self.order + 1)

    @staticmethod
    def target(coeffs, x, xp=np):
        """coeffs (N, order + 1), x (N, n, 1): Horner's rule, as numpy's polyval (the same bits)."""
        y = coeffs[:, -1, None, None] + x * 0
        for i in range(coeffs.shape[1] - 2, -1, -1):
            y = coeffs[:, i, None, None] + y * x
        return y
