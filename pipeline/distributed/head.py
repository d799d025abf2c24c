"""The Ray head that `metatrain cluster start` keeps on this machine (pipeline/local_cluster.py):
where its record lives, and whether one runs. Runs join it instead of starting a Ray of their own."""
from __future__ import annotations

import json
import os
from pathlib import Path


def state_file() -> Path:
    """$METATRAIN_HOME/cluster.json (default ~/.metatrain): the running head's pid and ports."""
    return Path(os.environ.get("METATRAIN_HOME") or Path.home() / ".metatrain").expanduser() / "cluster.json"


def running_head() -> dict | None:
    """The running head's record, or None (no record, or its process is gone: the record is removed)."""
    path = state_file()
    try:
        state = json.loads(path.read_text())
        os.kill(state["pid"], 0)
    except (OSError, ValueError, KeyError):  # no file, a damaged one, or a head that has ended
        if path.is_file():
            path.unlink(missing_ok=True)
        return None
    return state


def default_address() -> str:
    """Where a run's Ray is, when neither ray.address nor RAY_ADDRESS says: the head that `metatrain
    cluster start` runs on this machine, else "local" (a Ray started in this process)."""
    head = running_head()
    return f"127.0.0.1:{head['port']}" if head else "local"
