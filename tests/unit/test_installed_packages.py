"""The cached map of installed packages that MLflow checks a logged model's requirements against."""
import json
import subprocess
import sys
import textwrap

import importlib_metadata

from pipeline import installed_packages


def test_the_cached_map_is_importlib_metadatas_and_is_read_back(tmp_path):
    fresh = {k: list(v) for k, v in importlib_metadata.packages_distributions().items()}
    assert installed_packages.modules_to_packages(tmp_path) == fresh
    (cache,) = tmp_path.glob("packages-*.json")
    cache.write_text(json.dumps({"planted": ["only-in-the-cache"]}))  # read back, not computed again
    assert installed_packages.modules_to_packages(tmp_path) == {"planted": ["only-in-the-cache"]}
    cache.write_text("{torn")  # a torn cache is computed again
    assert installed_packages.modules_to_packages(tmp_path) == fresh


def test_installing_or_upgrading_a_package_changes_the_key(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    before = installed_packages._key()
    (site / "demo-1.0.dist-info").mkdir()
    installed = installed_packages._key()
    (site / "demo-1.0.dist-info").rename(site / "demo-1.1.dist-info")
    assert len({before, installed, installed_packages._key()}) == 3


def test_mlflow_gets_the_same_map_as_it_builds_itself(tmp_path):
    """MLflow's own module-to-package map (its additions included), built by MLflow and from the
    cache, in two fresh processes."""
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from mlflow.utils import requirements_utils as ru
        if sys.argv[1] == "cached":
            from pipeline.installed_packages import prepare_mlflow
            prepare_mlflow(Path({str(tmp_path)!r}))
            assert ru._MODULES_TO_PACKAGES is not None
        else:
            ru._init_modules_to_packages_map()
        print(json.dumps(ru._MODULES_TO_PACKAGES, sort_keys=True))
    """)
    maps = [subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True, check=True).stdout
            for how in ("own", "cached", "cached")]  # the second cached one reads the file the first wrote
    assert maps[0] == maps[1] == maps[2] and json.loads(maps[0])["torch"] == ["torch"]
    assert len(list(tmp_path.glob("packages-*.json"))) == 1
