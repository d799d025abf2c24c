"""Checkpoints: params, optimizer state, RNG state and counters in one file, loaded with
weights_only=True. A run directory keeps two: the newest (checkpoint.pt) and the one before it
(checkpoint.prev.pt). Each save writes a temporary file and renames it into place, so a crash
mid-write leaves both intact; a newest file damaged afterwards (truncated, overwritten) is
detected on load, named in one line, and the previous one is used instead."""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from pipeline import storage
from pipeline.config import ConfigError
from pipeline.driver.run_dir import CHECKPOINT, PREVIOUS_CHECKPOINT

KEYS = ("iteration", "params", "optimizer", "torch_rng", "skipped", "bad_streak", "status")
PARAMS_KEYS = ("iteration", "params")  # enough to use a model (adapt, serve), not to resume training


class CheckpointError(ConfigError):
    """No usable checkpoint: the CLI prints it as one line and exits 2."""


def read(path: Path, keys: tuple[str, ...] = KEYS) -> dict:
    """One checkpoint file, or ValueError saying in a few words what is wrong with it."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - truncated zip, garbage, unpickling refused: all "damaged"
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"unreadable: {type(e).__name__}: {first}".rstrip(": ")) from None
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a checkpoint")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    if not isinstance(state["params"], dict) or not all(isinstance(v, torch.Tensor) for v in state["params"].values()):
        raise ValueError("its params are not a mapping of tensors")
    return state


def _usable(path: Path) -> bool:
    try:
        read(path)
        return True
    except ValueError:
        return False


# The checkpoints this process wrote, by (inode, size, mtime): one still unchanged since is not read
# back before it becomes the previous one (reading it took about as long as writing the new one,
# and a population of 100 saves 100 of them at once).
_WRITTEN: dict[str, tuple] = {}


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def save(run_dir: Path, state: dict) -> Path:
    """Write the newest checkpoint; the one it replaces becomes the previous one, unless it is
    damaged (then the previous good one is kept)."""
    run_dir = Path(run_dir)
    path, prev = run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT

    def install(tmp: Path, path: Path) -> None:
        if path.is_file() and (_WRITTEN.get(os.path.abspath(path)) == _stamp(path) or _usable(path)):
            os.replace(path, prev)  # between the two renames a loader finds prev alone: still a good state
        os.replace(tmp, path)

    # Serialised in memory first: torch's zip writer turns a failed write into a RuntimeError that
    # hides the OSError; written so, a disk that fills leaves the checkpoints as they were (StorageError).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.write_file(path, lambda f: f.write(buffer.getbuffer()), binary=True, install=install)
    _WRITTEN[os.path.abspath(path)] = _stamp(path)
    return path


def load(run_dir: Path, log=print, keys: tuple[str, ...] = KEYS) -> dict:
    """The newest usable checkpoint. A damaged newest file is reported in one line (through log)
    and the previous checkpoint used; CheckpointError when neither is usable."""
    run_dir = Path(run_dir)
    path, prev = run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT
    if not path.is_file() and not prev.is_file():
        raise CheckpointError(f"RUN_DIR: {run_dir} holds no checkpoint ({CHECKPOINT})")
    problems = []
    for candidate in (path, prev):
        if not candidate.is_file():
            problems.append(f"{candidate.name} is missing")
            continue
        try:
            state = read(candidate, keys)
        except ValueError as e:
            problems.append(f"{candidate.name} is damaged ({e})")
            continue
        if candidate == prev:
            log(f"checkpoint: {'; '.join(problems)}; using {prev.name} (iteration {state['iteration']}) instead")
        return state
    raise CheckpointError(f"RUN_DIR: no usable checkpoint in {run_dir}: {'; '.join(problems)}")


HYPERPARAMS = "hyperparams"  # a PBT member's current values (driver/schedulers/pbt.py); config.yaml holds its start


def apply_hyperparams(cfg, state: dict):
    """cfg with the alpha, beta and Gumbel temperature a checkpoint state carries, if any (a member
    of a PBT population trains on with values its config.yaml does not hold)."""
    for key, value in state.get(HYPERPARAMS, {}).items():
        setattr(cfg, key, value)
    return cfg


def with_hyperparams(cfg, run_dir: Path):
    """cfg with the values of the run directory's newest usable checkpoint, where it has one: what
    `metatrain eval` / `resume` / `serve` build their run from."""
    try:
        return apply_hyperparams(cfg, load(run_dir, log=lambda m: None, keys=PARAMS_KEYS))
    except CheckpointError:
        return cfg  # the command that needs the checkpoint says so itself


def common_states(run_dirs: list[Path], logs) -> list[dict]:
    """Each member's checkpoint at one common iteration: members are saved one after another,
    so a population killed between two saves has some members one checkpoint ahead; their
    previous checkpoint is at the common iteration. Members that were stopped or diverged stay
    where they ended (a diverged member is saved when it diverges). logs: each member's log."""
    states = [load(d, log) for d, log in zip(run_dirs, logs)]
    frozen = ("stopped", "diverged")
    moving = [s["iteration"] for s in states if s["status"] not in frozen]
    common = min(moving) if moving else None
    for i, run_dir in enumerate(run_dirs):
        if common is not None and states[i]["iteration"] != common and states[i]["status"] not in frozen:
            prev = read(Path(run_dir) / PREVIOUS_CHECKPOINT)
            if prev["iteration"] != common:
                raise ConfigError(f"population: member {run_dir} has checkpoints at iterations "
                                  f"{states[i]['iteration']} and {prev['iteration']}, none at {common}")
            states[i] = prev
    return states
