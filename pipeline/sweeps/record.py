"""The layout of a sweep directory and the driver's trial manifest. No Ray imports: `metatrain
report` reads sweep directories without loading Ray Tune."""
from __future__ import annotations

import json
import os
from pathlib import Path

SPEC, STATE, MANIFEST, TUNE_DIR, TRIALS = "sweep.yaml", "sweep.json", "trials.json", "tune", "trials"
FINISHED = ("completed", "diverged")  # trials that ran to the end and were evaluated
TRIAL_STATUSES = (*FINISHED, "stopped", "error", "unfinished")


def read_manifest(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def write_manifest(sweep_dir: Path, manifest: dict) -> None:
    tmp = Path(sweep_dir) / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, Path(sweep_dir) / MANIFEST)
