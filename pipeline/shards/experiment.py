"""An experiment config turned into the objects that do the work: learner, task distribution,
inner loops. `train_shard` / `eval_shard` sample a range of task indices and adapt them; they are
what the in-process trainer and (later) every Ray worker call."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from pipeline.config import Config
from pipeline.core.learners import Network, conv4, mlp
from pipeline.core.meta_batch import InnerSettings, Learner, ShardResult, shard_evaluate, shard_meta_gradient
from pipeline.core.rules import get_rule
from pipeline.shards.chunking import time_chunk_sizes
from pipeline.shards.compiled import (
    COMPILE_AUTO_ITERATIONS,
    ExecutionPlan,
    curve_at,
    training_shard_functions,
)
from tasks import TASKS, image_format, make_distribution, samples_on_device
from tasks.sampling import sample_batch


def make_network(cfg: Config) -> Network:
    """The learner's network from the config alone (no data is read): what a checkpoint's
    parameters belong to."""
    if TASKS[cfg.task.name].kind != "images":  # regression: one input, one output
        net = mlp(1, cfg.model.hidden, 1, cfg.model.init_std)
    else:
        channels, size = image_format(cfg.task)
        net = conv4(channels, cfg.model.ways or cfg.task.ways, size, cfg.model.filters, cfg.model.strided,
                    batch_norm=cfg.model.batch_norm == "batch")
    return replace(net, low=torch.bfloat16 if cfg.train.precision == "bf16" else None)


def set_precision(precision: str, device) -> None:
    """train.precision on a CUDA device: "tf32" lets cuBLAS and cuDNN round float32 products to
    TF32 (torch's default for cuDNN convolutions); "fp32" and "bf16" keep float32 arithmetic
    float32. Process-wide flags, set where the shards run; nothing to set on a CPU."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"


def make_learner(cfg: Config) -> Learner:
    return Learner(make_network(cfg), get_rule(cfg.method))


class Experiment:
    """The few-shot family's shard source (pipeline/shards/sources.py, ShardSource)."""

    compile_auto_from = COMPILE_AUTO_ITERATIONS  # train.compile: auto compiles runs at least this long

    def __init__(self, cfg: Config, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        self.cfg, self.dtype, self.device = cfg, dtype, device
        set_precision(cfg.train.precision, device)
        self.distribution = make_distribution(cfg.task)
        self.sample_on_device = samples_on_device(cfg.task, device)
        d = self.distribution
        if hasattr(d, "check"):  # every K and query size the run will ask for exists in the data
            if cfg.task.split != "all":  # "all": an evaluation-only data set, nothing to train on
                d.check(split="train", shots=cfg.task.shots, query=cfg.task.query)
            d.check(split="test", shots=max(cfg.eval.shots), query=cfg.task.query, key="eval.shots")
        self.plan = ExecutionPlan.of(cfg, self.compile_auto_from)
        self.learner = make_learner(cfg)
        self.train_inner = InnerSettings(cfg.alpha, cfg.inner_steps, cfg.gumbel_temperature, "sample")
        self._noise_shapes = None
        # "auto" stays the whole shard until the trainer has timed the choices (set_chunk_size)
        self.set_chunk_size(0 if cfg.train.tasks_per_vmap == "auto" else cfg.train.tasks_per_vmap)
        self.metric_name = "query MSE" if d.loss == "mse" else "query accuracy"

    def set_chunk_size(self, tasks_per_vmap: int) -> None:
        self.chunk = tasks_per_vmap or None
        # iterations that log no query-loss curve skip computing it (curve_at); under
        # train.compile that shard function is compiled on its first call
        self._shard_fns = training_shard_functions(self.learner, self.train_inner, self.chunk, self.plan.compile,
                                                   graphs=self.plan.graphs)

    def time_chunk_sizes(self, params: dict, indices: Sequence[int]) -> dict[int, float]:
        """Eager shard-call times of the run's first training shard at each tasks_per_vmap choice
        (as most iterations run: without the query-loss curve)."""
        batch = self.sample(params, split="train", seed=self.cfg.seed, iteration=0, indices=indices,
                            shots=self.cfg.task.shots)
        plain = replace(self.train_inner, curve=False)
        return time_chunk_sizes(lambda c: shard_meta_gradient(self.learner, plain, params, batch, c),
                                len(indices))

    @property
    def rule(self):
        return self.learner.rule

    def updated_fraction(self, params: dict) -> dict | None:
        return self.learner.rule.updated_fraction(params)

    def init_params(self) -> dict:
        params = self.learner.init_params(self.cfg.seed, self.dtype)
        return {k: v.to(self.device) for k, v in params.items()}

    def noise_shapes(self, params: dict) -> dict:
        if self._noise_shapes is None:
            self._noise_shapes = self.learner.rule.noise_shapes(params)
        return self._noise_shapes

    def sample(self, params, *, split, seed, iteration, indices, shots) -> dict:
        return sample_batch(self.distribution, seed=seed, split=split, iteration=iteration, indices=indices,
                            shots=shots, query=self.cfg.task.query, noise_shapes=self.noise_shapes(params),
                            dtype=self.dtype, device=self.device, on_device=self.sample_on_device)

    def train_shard(self, params: dict, iteration: int, indices: Sequence[int], carry=None) -> ShardResult:
        batch = self.sample(params, split="train", seed=self.cfg.seed, iteration=iteration, indices=indices,
                            shots=self.cfg.task.shots)
        return self._shard_fns[curve_at(self.cfg, iteration)](params, batch)

    def eval_shard(self, params: dict, indices: Sequence[int], *, shots: int, seed: int,
                   inner_steps: int, mask_mode: str, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.sample(params, split=split, seed=seed, iteration=0, indices=indices, shots=shots)
        inner = InnerSettings.for_eval(self.cfg, inner_steps, mask_mode)
        return shard_evaluate(self.learner, inner, params, batch, self.chunk)
