"""Which installed distribution provides each top-level module, as MLflow asks when it logs a model.

Before writing a model's pip requirements, MLflow warns about any the environment does not satisfy;
to name packages it maps every installed distribution's files to the modules they hold
(`importlib_metadata.packages_distributions()`, reading each distribution's RECORD: 0.39 s on
2 cores, once per process, so once per `metatrain train`; benchmarks/RESULTS.md, "Start-up"). The
map depends only on what is installed, so it is kept in $METATRAIN_HOME under a key made of the
import path and the distributions' metadata folders (their names carry the versions: installing,
upgrading or removing a package changes the key), and handed to MLflow, which still makes its own
check with it. An MLflow without the hook point computes the map itself, as before.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
from pathlib import Path


def _key() -> str:
    """The import path and every distribution's metadata folder on it (name-version.dist-info)."""
    seen = []
    for entry in sys.path:
        folder = Path(entry or os.getcwd())
        with contextlib.suppress(OSError):
            seen.append(f"{folder.resolve()}:" + ",".join(sorted(
                n for n in os.listdir(folder) if n.endswith((".dist-info", ".egg-info")))))
    return hashlib.sha256("\n".join(seen).encode()).hexdigest()[:16]


def modules_to_packages(home: Path) -> dict[str, list[str]]:
    """`importlib_metadata.packages_distributions()`, read from home's cache when nothing installed
    has changed since it was written."""
    import importlib_metadata

    path = home / f"packages-{_key()}.json"
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    found = {module: list(dists) for module, dists in importlib_metadata.packages_distributions().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(OSError):  # a cache: one not written is computed again next time
        home.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(found))
        os.replace(tmp, path)  # whole or not at all, whichever process writes it
    tmp.unlink(missing_ok=True)
    return found


def prepare_mlflow(home: Path) -> None:
    """MLflow's module-to-package map built from the cached one (its own additions made as usual)."""
    from mlflow.utils import requirements_utils as ru

    if getattr(ru, "_MODULES_TO_PACKAGES", "absent") is not None or \
            not callable(getattr(ru, "_init_modules_to_packages_map", None)):
        return  # built already in this process, or an MLflow that keeps it elsewhere
    cached = modules_to_packages(home)
    metadata = ru.importlib_metadata
    real = metadata.packages_distributions
    metadata.packages_distributions = lambda: {k: list(v) for k, v in cached.items()}
    try:
        ru._init_modules_to_packages_map()
    finally:
        metadata.packages_distributions = real
