"""A local model server for trying an exported model, and for the tests and benchmarks that serve
one for real: `mlflow models serve` as a context manager, and its client."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 now (held together while they are chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class ModelServer:
    """`mlflow models serve -m MODEL` on 127.0.0.1 (a free port, the local environment) in its own
    process group, ended (by that group's id) on exit; `post` sends an episode as a client would."""

    def __init__(self, model: Path, log: Path, host: str = "127.0.0.1", port: int = 0):
        self.port = port or free_port()
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{self.port}"
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model),
                                      "--env-manager", "local", "--host", host, "--port", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait(self, timeout=180.0):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited: {Path(self.log.name).read_text()[-3000:]}")
            try:
                if urllib.request.urlopen(self.url + "/ping", timeout=2).status == 200:
                    return time.monotonic() - t0
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"no /ping after {timeout} s: {Path(self.log.name).read_text()[-3000:]}")

    def post(self, episode: pd.DataFrame, params: dict | None = None):
        from pipeline.serve.serving import request_body

        body = request_body(episode, params)
        req = urllib.request.Request(self.url + "/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        """The server's whole process group ends (its workers too, not only the leader): SIGTERM,
        then SIGKILL for what is left after 30 s."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:  # workers outlive their leader a moment
            time.sleep(0.05)
        if _group_alive(self.proc.pid):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user took the id: ours are gone
        return False
