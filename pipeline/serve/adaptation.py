"""Use a meta-learned run: load it, adapt it to a few-shot task of your own, predict.

    from pipeline.serve.adaptation import load_run
    run = load_run("runs/my-run")                       # config.yaml + checkpoint.pt, no training data
    predictor = run.adapt(x_support, y_support)         # the run's rule, alpha, eval.inner_steps, masks
    predictor.predict(x_query)                          # DataFrame: label, class_index, probability | y

Adaptation is the evaluation's inner loop, `pipeline.core.meta_batch.inner_adapt`, on one task: the
run's update rule and meta-parameters, its inner step size, `eval.inner_steps` steps (or `steps`)
and `eval.mask` masks. Sampled masks use the noise of test task 0 of `eval.seed` (or `seed`), so
adapting the support set of that evaluation task reproduces the evaluation exactly.

Batch norm follows the run's evaluation (`eval.query_bn`): with "batch" (every method but the
Meta-Learner LSTM) query examples are normalised by their own batch's statistics, so the prediction
of one depends on the others predicted with it; with "support" (the Meta-Learner LSTM, its paper's
section 3.4) by averages of the support passes, so each prediction stands alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.config import Config, ConfigError, load_config
from pipeline.core.learners import forward
from pipeline.core.meta_batch import InnerSettings, inner_adapt
from pipeline.driver import checkpoint
from pipeline.driver.run_dir import CONFIG, check_run_dir
from pipeline.shards.experiment import make_learner
from tasks import TASKS, image_format
from tasks.sampling import NOISE_STREAM, Streams


class MetaLearnedNetwork(torch.nn.Module):
    """The meta-learned initialisation as a plain module for `mlflow.pytorch.log_model`:
    forward(x) is the network before adaptation. Adapting it needs the update rule and its
    meta-parameters, which `checkpoint.pt` and `metatrain eval` carry."""

    def __init__(self, net, params: dict):
        super().__init__()
        self.net, self.names = net, list(params)
        for k, v in params.items():
            self.register_parameter(k.replace(".", "__"), torch.nn.Parameter(v.detach().clone(), requires_grad=False))

    def forward(self, x):
        return forward(self.net, {k: getattr(self, k.replace(".", "__")) for k in self.names}, x)


def load_run(run_dir: str | Path) -> MetaLearnedRun:
    """A finished (or checkpointed) run directory: its config and latest parameters.

    Arguments:
        run_dir: a folder as `metatrain train` writes it (config.yaml and checkpoint.pt); the
          training data need not exist here.

    Example:
        >>> run = load_run("runs/maml-sinusoid-s0-...")                          # doctest: +SKIP
        >>> run.adapt(x_support, y_support).predict(x_query)                      # doctest: +SKIP
    """
    path = Path(run_dir)
    check_run_dir(path, need_checkpoint=True)
    # local=False: the training data need not exist here (a served model carries no data)
    state = checkpoint.load(path, keys=checkpoint.PARAMS_KEYS)  # torch.load(weights_only=True)
    cfg = checkpoint.apply_hyperparams(load_config(path / CONFIG, local=False), state)
    return MetaLearnedRun(cfg, state["params"], state.get("iteration", 0))


class MetaLearnedRun:
    """A meta-learned network that adapts to new tasks (its run's inner loop, eval.inner_steps and
    eval.mask) and predicts their query examples.

    Arguments:
        cfg: the run's config.
        params: its meta-parameters (the checkpoint's), shaped as the config's network.
        iteration: the meta-iteration they were saved at.

    Example:
        >>> predictor = load_run(run_dir).adapt(images, labels, steps=3)          # doctest: +SKIP
        >>> predictor.predict(query_images)[["label", "probability"]]            # doctest: +SKIP
    """

    def __init__(self, cfg: Config, params: dict, iteration: int = 0):
        self.cfg, self.iteration = cfg, iteration
        self.learner = make_learner(cfg)
        expected = self.learner.init_params(0, torch.float32)
        if set(params) != set(expected) or any(params[k].shape != v.shape for k, v in expected.items()):
            raise ConfigError("RUN_DIR: the checkpoint's parameters do not fit the network of its config.yaml")
        self.params = {k: v.detach() for k, v in params.items()}
        self.dtype = next(iter(self.params.values())).dtype
        self.classification = TASKS[cfg.task.name].kind == "images"
        if self.classification:
            self.channels, self.image_size = image_format(cfg.task)
            self.ways = self.learner.net.cells[-1].fan_out  # outputs of the head
            self.invert = TASKS[cfg.task.name].inverted  # read as the training images were (Omniglot: inverted)

    @property
    def kind(self) -> str:
        return f"{self.ways}-way image classification ({self.cfg.task.name})" if self.classification else \
            f"regression ({self.cfg.task.name})"

    def inputs(self, x, what: str = "x") -> torch.Tensor:
        """Images (n, C, H, W) or, grey, (n, H, W) in [0, 1]; regression inputs (n,) or (n, 1)."""
        x = _tensor(x, self.dtype)
        if not self.classification:
            if x.dim() == 1:
                x = x[:, None]
            if x.dim() != 2 or x.shape[1] != 1 or len(x) == 0:
                raise ConfigError(f"{what}: expected n >= 1 scalar inputs, got shape {tuple(x.shape)}")
            return x
        if x.dim() == 3 and self.channels == 1:
            x = x[:, None]
        want = (self.channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want or len(x) == 0:
            raise ConfigError(f"{what}: expected images of shape (n, {', '.join(map(str, want))}) as the run's data, "
                              f"got {tuple(x.shape)}")
        return x

    def adapt(self, x_support, y_support, steps: int | None = None, seed: int | None = None) -> Predictor:
        """Adapt to one task's support set. Classification labels may be any sortable values
        (class names); they are numbered in sorted order, at most the head's number of ways."""
        steps = self.cfg.eval.inner_steps if steps is None else int(steps)
        if steps < 0:
            raise ConfigError(f"--steps: must be >= 0, got {steps}")
        x = self.inputs(x_support, "support")
        if self.classification:
            names = list(y_support)
            labels = sorted(set(names))
            if len(labels) > self.ways:
                raise ConfigError(f"support: {len(labels)} classes, but the run's model is {self.ways}-way "
                                  f"(its head has {self.ways} outputs)")
            number = {c: i for i, c in enumerate(labels)}
            y = torch.tensor([number[c] for c in names], dtype=torch.long)
        else:
            labels = None
            y = _tensor(y_support, self.dtype).reshape(-1, 1)
        if len(y) != len(x):
            raise ConfigError(f"support: {len(x)} inputs but {len(y)} labels")
        rule = self.learner.rule
        noise_streams = Streams(self.cfg.eval.seed if seed is None else seed, "test", 0, [0], NOISE_STREAM)
        noise = {k: torch.as_tensor(noise_streams.logistic(s)[0], dtype=self.dtype)
                 for k, s in sorted(rule.noise_shapes(self.params).items())}
        inner = InnerSettings.for_eval(self.cfg, steps)
        fast, _ = inner_adapt(self.learner, inner, self.params, {"x_support": x, "y_support": y, "noise": noise})
        return Predictor(self, {**self.params, **{k: v.detach() for k, v in fast.items()}}, labels)


def _tensor(x, dtype) -> torch.Tensor:
    """A copy of numpy / torch / pandas / list data (callers may pass read-only arrays)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(dtype).clone()
    return torch.as_tensor(np.array(x, dtype=np.float64), dtype=dtype)


@dataclass
class Predictor:
    run: MetaLearnedRun
    weights: dict  # every parameter, fast weights adapted
    labels: list | None  # classification: the support label of each class index

    def outputs(self, x_query) -> torch.Tensor:
        """The adapted network's raw outputs (float64): regression values or class logits."""
        x = self.run.inputs(x_query, "query")
        with torch.no_grad():
            return forward(self.run.learner.net, self.weights, x).double()

    def probabilities(self, x_query) -> torch.Tensor:
        """(n, classes of the support) class probabilities; head outputs beyond the support's classes unused."""
        return torch.softmax(self.outputs(x_query)[:, :len(self.labels)], dim=-1)

    def predict(self, x_query) -> pd.DataFrame:
        """Regression: column y. Classification: label, class_index and probability (softmax over
        the support's classes) of the most probable class, one row per query example."""
        if self.labels is None:
            return pd.DataFrame({"y": self.outputs(x_query)[:, 0].numpy()})
        p, idx = self.probabilities(x_query).max(dim=-1)
        return pd.DataFrame({"label": [self.labels[i] for i in idx.tolist()], "class_index": idx.numpy(),
                             "probability": p.numpy()})
