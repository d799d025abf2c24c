"""Serve adaptation: an MLflow pyfunc model whose `predict` takes one few-shot episode and returns
the query predictions after adapting to its support rows (`pipeline.serve.adaptation`, the evaluation's
inner loop).

An episode is a DataFrame, one row per example:
- image runs: `role` (support | query), `label` (the class name; empty on query rows) and `image`
  (the image file's bytes, base64: PNG, JPEG, ...), decoded like the run's data;
- regression runs: `role`, `x` and `y` (empty on query rows).
The answer has one row per query row, in order: `label`, `class_index`, `probability` (images) or
`y` (regression). The optional param `steps` overrides eval.inner_steps.

The model holds the run's config.yaml and parameters (loaded with torch.load(weights_only=True))
and this package's code (code_paths; the model object is built by pipeline/serve/served_model.py, MLflow's
"models from code", so nothing is unpickled), so `mlflow models serve -m DIR --env-manager local` needs no
checkout. It is logged with every tracked run that logs models (name `adapt_model`) and written
for a finished run by `metatrain export`.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from pipeline.config import ConfigError, save_config
from pipeline.driver import checkpoint
from pipeline.serve.adaptation import MetaLearnedRun, load_run
from pipeline.serve.episode_files import ImageReader
from tasks import make_distribution
from tasks.images import pixels_to_float
from tasks.sampling import DATA_STREAM, Streams, sample_batch

ROLES = ("support", "query")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "adapt_model"


def predict_episode(run: MetaLearnedRun, episode: pd.DataFrame, steps: int | None = None) -> pd.DataFrame:
    columns = ("role", "label", "image") if run.classification else ("role", "x", "y")
    missing = [c for c in columns if c not in episode.columns]
    if missing:
        raise ConfigError(f"episode: no column {missing[0]!r}; a {run.kind} episode has columns {', '.join(columns)}")
    role = episode["role"].astype(str).str.strip().str.lower()
    unknown = sorted(set(role) - set(ROLES))
    if unknown:
        raise ConfigError(f"episode: role {unknown[0]!r}; allowed: {', '.join(ROLES)}")
    support, query = episode[role == "support"], episode[role == "query"]
    if support.empty or query.empty:
        raise ConfigError(f"episode: needs support and query rows, got {len(support)} support, {len(query)} query")
    if run.classification:
        labels = [str(v).strip() if v is not None else "" for v in support["label"]]
        if any(not v or v == "nan" for v in labels):
            raise ConfigError("episode: every support row needs a label")
        reader = ImageReader(run.image_size, run.channels, run.invert)
        xs, xq = (pixels_to_float(np.stack([reader.read(_b64(v, i), f"row {i}", "episode image")
                                            for i, v in zip(rows.index, rows["image"])]))
                  for rows in (support, query))
        return run.adapt(xs, labels, steps).predict(xq)
    xs, ys, xq = (pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
                  for col in (support["x"], support["y"], query["x"]))
    if np.isnan(xs).any() or np.isnan(ys).any() or np.isnan(xq).any():
        raise ConfigError("episode: x (and y on support rows) must be numbers")
    return run.adapt(xs, ys, steps).predict(xq)


def _b64(value, row) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"episode: image of row {row} is not base64") from None


class EpisodeModel(mlflow.pyfunc.PythonModel):
    """pyfunc: one few-shot episode in, the query predictions after adaptation out."""

    def load_context(self, context):
        self.run = load_run(context.artifacts["run"])

    # the type hint is what MLflow checks for (a bare `model_input` warns on every import); the
    # schema itself is the explicit signature the model is logged with
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        steps = (params or {}).get("steps")
        return predict_episode(self.run, pd.DataFrame(model_input), None if steps is None or steps < 0 else steps)


def encode_image(pixels: np.ndarray) -> str:
    """uint8 (H, W) or (H, W, 3) pixels as a base64 PNG: the episode's image encoding."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def example_episode(run: MetaLearnedRun, seed: int = 0) -> pd.DataFrame:
    """A small episode of the run's kind (random images, or a task of the run's regression family)."""
    rng = np.random.default_rng(seed)
    if run.classification:
        shape = (run.image_size, run.image_size) + ((3,) if run.channels == 3 else ())
        ways = min(run.ways, 3)
        rows = [("support", f"class_{c}", encode_image(rng.integers(0, 256, shape, dtype=np.uint8)))
                for c in range(ways)]
        rows += [("query", "", encode_image(rng.integers(0, 256, shape, dtype=np.uint8))) for _ in range(2)]
        return pd.DataFrame(rows, columns=["role", "label", "image"])
    task = make_distribution(run.cfg.task).sample(Streams(seed, "test", 0, [0], DATA_STREAM), 5, 3)
    return pd.DataFrame({"role": ["support"] * 5 + ["query"] * 3,
                         "x": np.concatenate([task["x_support"][0, :, 0], task["x_query"][0, :, 0]]),
                         "y": np.concatenate([task["y_support"][0, :, 0], np.full(3, np.nan)])})


def test_episode(run: MetaLearnedRun) -> pd.DataFrame:
    """Test task 0 of the run's own evaluation (eval.seed, K = 1), as an episode: a real request of
    the run's kind. An image run whose data is not on this machine gets
    `example_episode` (random pixels) instead."""
    if not run.classification:
        return example_episode(run, run.cfg.eval.seed)
    from dataclasses import replace

    from pipeline.config import data_path

    try:
        task_cfg = replace(run.cfg.task, data=[str(data_path(d)) for d in run.cfg.task.data])
        task = sample_batch(make_distribution(task_cfg), seed=run.cfg.eval.seed, split="test", iteration=0,
                            indices=[0], shots=1, query=run.cfg.task.query)  # as the evaluation draws it at K = 1
    except (ConfigError, OSError):
        return example_episode(run)

    def png(x: torch.Tensor) -> str:  # the float image back to the file's pixels (Omniglot: dark strokes)
        pixels = np.rint(x.numpy() * 255).astype(np.uint8)
        pixels = 255 - pixels if run.invert else pixels
        return encode_image(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))

    rows = [("support", f"class_{int(y)}", png(x)) for x, y in zip(task["x_support"][0], task["y_support"][0])]
    rows += [("query", "", png(x)) for x in task["x_query"][0]]
    return pd.DataFrame(rows, columns=["role", "label", "image"])


def request_body(episode: pd.DataFrame, params: dict | None = None) -> dict:
    """The JSON body of a scoring request for an episode (MLflow's dataframe_split format)."""
    import json

    body = {"dataframe_split": json.loads(episode.to_json(orient="split", index=False))}
    if params:
        body["params"] = params
    return body


def signature(run: MetaLearnedRun):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    if run.classification:
        inputs = Schema([ColSpec("string", "role"), ColSpec("string", "label", required=False),
                         ColSpec("string", "image")])
        outputs = Schema([ColSpec("string", "label"), ColSpec("long", "class_index"), ColSpec("double", "probability")])
    else:
        inputs = Schema([ColSpec("string", "role"), ColSpec("double", "x"), ColSpec("double", "y", required=False)])
        outputs = Schema([ColSpec("double", "y")])
    params = ParamSchema([ParamSpec("steps", "long", -1)])  # -1: the run's eval.inner_steps
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _model_kwargs(run: MetaLearnedRun, files: Path) -> dict:
    """What save_model and log_model share: the run's config and parameters as the model's artifact."""
    files = files / "run"
    files.mkdir()
    save_config(run.cfg, files / "config.yaml")
    checkpoint.save(files, {"params": run.params, "iteration": run.iteration})
    return {"python_model": str(PROJECT_ROOT / "pipeline" / "serve" / "served_model.py"),
            "artifacts": {"run": str(files)},
            "code_paths": [str(PROJECT_ROOT / "pipeline"), str(PROJECT_ROOT / "tasks")],
            "signature": signature(run), "input_example": example_episode(run),
            "pip_requirements": [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                                 "numpy", "pandas", "pillow", "pyyaml"]}


@contextlib.contextmanager
def quiet_downloads():
    """No progress bars for the artifacts MLflow downloads back to validate a model it saves or
    logs (they would end every run's and every export's console output)."""
    before = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = before


def save(run: MetaLearnedRun, out: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
        mlflow.pyfunc.save_model(str(out), **_model_kwargs(run, Path(tmp)))
    return out


def log(run: MetaLearnedRun) -> str:
    """Log into the active MLflow run; returns the model URI."""
    with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
        return mlflow.pyfunc.log_model(name=MODEL_NAME, **_model_kwargs(run, Path(tmp))).model_uri
