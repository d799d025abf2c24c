"""Checkpoints: params, optimizer state, RNG state and counters in one file, written atomically so
a crash mid-write never leaves a corrupt checkpoint; loaded with weights_only=True."""
from __future__ import annotations

import os
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"


def save(run_dir: Path, state: dict) -> Path:
    path = Path(run_dir) / CHECKPOINT
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load(run_dir: Path) -> dict:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint in this run directory")
    return torch.load(path, weights_only=True, map_location="cpu")
