"""Remote jobs without a cluster: no dashboard or no address is a one-line error; and the cluster
definitions, validated offline (jobs on a real Ray head node: tests/integration)."""
import json

import yaml

from pipeline.cli import main
from pipeline.config import CONFIG_DIR

from helpers import ROOT, free_ports


def test_no_dashboard_and_no_address_are_one_line_errors(monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    (port,) = free_ports(1)
    assert main(["jobs", "list", "--address", f"http://127.0.0.1:{port}"]) == 2
    assert "no Ray dashboard answers at http://127.0.0.1:" in capsys.readouterr().err
    assert main(["jobs", "list"]) == 2
    assert "--address: give the cluster's dashboard address" in capsys.readouterr().err
    assert main(["submit", "train", "/etc/hostname", "--address", "http://127.0.0.1:1"]) == 2
    assert "is outside the project" in capsys.readouterr().err


# -- the cluster definitions ------------------------------------------------------------------
def test_cluster_yaml_validates_offline_and_fits_the_shipped_configs():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)
    assert raw["provider"]["type"] == "aws"
    rules = raw["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]  # SSH only, nothing else is opened
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r["IpRanges"])
    start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "RAY_AUTH_MODE=token" in start
    assert any("pip install" in c and "~/metatrain" in c for c in raw["setup_commands"])
    nodes = {name: t["resources"] for name, t in config["available_node_types"].items()}
    gpu_types = [n for n, r in nodes.items() if r.get("GPU", 0) >= 1]
    assert any(nodes[n]["GPU"] == 1 for n in gpu_types) and any(nodes[n]["GPU"] > 1 for n in gpu_types)
    assert nodes[raw["head_node_type"]].get("GPU", 0) == 0
    assert all(config["available_node_types"][n]["min_workers"] == 0 for n in gpu_types)  # autoscaling from 0

    def fits(bundle):
        return any(all(r.get(k, 0) >= v for k, v in bundle.items()) for r in nodes.values())

    from pipeline.yaml_dataclasses import load_yaml

    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        raw_cfg = load_yaml(path)
        if "space" in raw_cfg:  # a sweep: its per-trial bundles
            res = raw_cfg.get("resources", {})
            worker = {"CPU": res.get("cpus_per_worker", 1), "GPU": res.get("gpus_per_worker", 0)}
            assert fits({"CPU": res.get("cpus", 1)}) and fits(worker), path.name
        else:  # an experiment: its shard workers
            ray_cfg = raw_cfg.get("ray", {})
            assert fits({"CPU": ray_cfg.get("cpus_per_worker", 1), "GPU": ray_cfg.get("gpus_per_worker", 0)}), path.name


def test_kuberay_rayjob_manifest():
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kuberay-rayjob.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["entrypoint"].startswith("python -m pipeline.cli sweep ")
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert env["pip"] and "working_dir" in env
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sorted(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) for g in groups)
    assert gpus[0] == 1 and gpus[-1] > 1
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"  # never exposed outside the Kubernetes cluster
    assert json.dumps(job).count('"RAY_AUTH_MODE"') == 1 + len(groups)  # token auth on every node
    assert [l for l in (ROOT / "requirements.txt").read_text().splitlines() if l and not l.startswith("#")
            and not l.startswith("ray")] == env["pip"]  # the image brings Ray itself
