"""`metatrain cluster start | status | stop`: a Ray head on this machine, bound to 127.0.0.1 with
token authentication, that `submit`, `jobs`, `train --address` and `sweep --address` use as they
use a remote cluster. One head per state file ($METATRAIN_HOME/cluster.json, default
~/.metatrain): `stop` ends exactly that head's processes (and the job drivers it started), not
other Ray instances on the machine."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline import storage
from pipeline.distributed.head import running_head, state_file
from tasks.errors import ConfigError

READY_S = 180.0  # a cold head on 2 cores takes 10-30 s


def ensure_token() -> str:
    """Where the head's token comes from: RAY_AUTH_TOKEN, else ~/.ray/auth_token (created, 0600,
    when missing): the place `submit`, `jobs` and Ray's own clients read it from."""
    from pipeline.jobs import token_path

    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = token_path()
    if not (path.is_file() and path.read_text().strip()):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return str(path)


def _usage(state: dict) -> str:
    gcs, dash = f"127.0.0.1:{state['port']}", f"http://127.0.0.1:{state['dashboard_port']}"
    return (f"Ray head on this machine: {state['cpus']} CPU(s), token auth ({state['token']}), pid {state['pid']}\n"
            f"  submit jobs:  metatrain submit train sine_quick --address {dash} --no-pip --follow\n"
            f"                metatrain jobs list --address {dash}\n"
            f"  run on it:    metatrain train sine_quick --address {gcs}   (sweeps: --address {gcs})\n"
            f"  stop it:      metatrain cluster stop")


def start(cpus: int, port: int, dashboard_port: int, log=print) -> int:
    state = running_head()
    if state is not None:
        log(f"already running ({state_file()})\n{_usage(state)}")
        return 0
    from pipeline.serve.model_server import free_ports, port_in_use

    for key, p in (("--port", port), ("--dashboard-port", dashboard_port)):
        if port_in_use("127.0.0.1", p):
            raise ConfigError(f"{key}: 127.0.0.1:{p} is in use (another Ray head?); choose another {key}, or "
                              "`metatrain cluster status` / `ray status` to see what runs")
    if cpus < 1:
        raise ConfigError(f"--cpus: must be >= 1, got {cpus}")
    token = ensure_token()
    temp_dir = Path("/tmp") / f"metatrain-ray-{port}"  # short: Unix socket paths are limited to ~107 bytes
    agent_http, agent_grpc, metrics, env_agent, client, node_mgr, obj_mgr = free_ports(7)
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--include-dashboard=true",
           f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={env_agent}",
           f"--ray-client-server-port={client}", f"--node-manager-port={node_mgr}",
           f"--object-manager-port={obj_mgr}", f"--num-cpus={cpus}", f"--temp-dir={temp_dir}"]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    head_log = path.parent / f"ray-head-{port}.log"
    with open(head_log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=path.parent)
    state = {"pid": proc.pid, "port": port, "dashboard_port": dashboard_port, "cpus": cpus,
             "temp_dir": str(temp_dir), "log": str(head_log), "token": token}
    storage.write_text(path, json.dumps(state, indent=2))
    log(f"starting a Ray head on 127.0.0.1:{port} (log: {head_log})")
    t0 = time.monotonic()
    while not _ready(dashboard_port):
        if proc.poll() is not None or time.monotonic() - t0 > READY_S:
            stop(log=lambda m: None)
            tail = head_log.read_text().strip().splitlines()[-1:] if head_log.is_file() else []
            raise ConfigError(f"cluster start: the head did not come up ({'; '.join(tail) or 'no output'}); "
                              f"see {head_log}")
        time.sleep(1.0)
    log(f"ready in {time.monotonic() - t0:.0f} s\n{_usage(state)}")
    return 0


def _ready(dashboard_port: int) -> bool:
    """The Jobs API answers a listing with the token (what `submit` needs first)."""
    from pipeline.jobs import Jobs

    try:
        with contextlib.redirect_stderr(None):
            Jobs(f"http://127.0.0.1:{dashboard_port}").client.list_jobs()
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def status(log=print) -> int:
    state = running_head()
    if state is None:
        log("no Ray head started by `metatrain cluster start` runs (start one: metatrain cluster start)")
        return 1
    log(_usage(state))
    return 0


def stop(log=print) -> int:
    """End the head's process group, then any job driver that outlived it (they run in sessions of
    their own, in the head's temp dir); remove its temp dir and the record."""
    import psutil

    state = running_head()
    if state is None:
        log("no Ray head started by `metatrain cluster start` runs; nothing to stop")
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.killpg(state["pid"], signal.SIGTERM)
    try:
        psutil.Process(state["pid"]).wait(timeout=10)
    except psutil.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(state["pid"], signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter(["cwd"]):
        if (p.info["cwd"] or "").startswith(state["temp_dir"]):
            with contextlib.suppress(psutil.Error):
                p.kill()
    shutil.rmtree(state["temp_dir"], ignore_errors=True)
    state_file().unlink(missing_ok=True)
    log(f"stopped the Ray head on 127.0.0.1:{state['port']}")
    return 0
