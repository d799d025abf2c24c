"""The layout of a sweep directory and the driver's trial manifest. No Ray imports: `metatrain
report` reads sweep directories without loading Ray Tune."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import storage

SPEC, STATE, MANIFEST, TUNE_DIR, TRIALS = "sweep.yaml", "sweep.json", "trials.json", "tune", "trials"
FINISHED = ("completed", "diverged")  # trials that ran to the end and were evaluated
TRIAL_STATUSES = (*FINISHED, "stopped", "error", "unfinished")


def read_manifest(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def write_manifest(sweep_dir: Path, manifest: dict) -> None:
    storage.write_text(Path(sweep_dir) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
