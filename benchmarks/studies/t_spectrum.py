"""What the learned metric T did in each T-net / MT-net trial of a sweep: singular values per layer.

A T cell computes T(W x); one inner step on W moves the cell's map TW by -alpha T T^T grad_(TW), so
alpha * sigma(T)^2 is the step the cell really takes along each singular direction of T. If T
learned to undo a bad alpha, alpha * sigma_max^2 sits near the good steps (~1e-2) whatever alpha was.
Reads each trial's final checkpoint (weights_only) and config.
Usage:  python benchmarks/studies/t_spectrum.py SWEEP_DIR   (e.g. sweeps/robustness_alpha)
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml


def main(sweep_dir: Path) -> None:
    print("| trial | alpha | layer | sigma_min(T) | sigma_max(T) | alpha * sigma_max^2 |")
    print("|---|---|---|---|---|---|")
    for trial in sorted((sweep_dir / "trials").iterdir()):
        ckpt = trial / "checkpoint.pt"
        if not ckpt.is_file():
            continue
        params = torch.load(ckpt, weights_only=True)["params"]
        alpha = yaml.safe_load((trial / "config.yaml").read_text())["alpha"]
        for name in sorted(k for k in params if k.endswith(".T")):
            s = torch.linalg.svdvals(params[name].double().reshape(params[name].shape[0], -1))
            print(f"| {trial.name} | {alpha:g} | {name[:-2]} | {s.min():.3g} | {s.max():.3g} | "
                  f"{alpha * s.max() ** 2:.3g} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
