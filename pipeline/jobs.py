"""`metatrain submit` and `metatrain jobs`: train and sweep runs sent to a Ray cluster through the
Ray Jobs API (`JobSubmissionClient`), and the submitted jobs listed, watched, read and stopped.

A job ships this project as the runtime environment's `working_dir` (without run outputs, data and
virtualenvs) with requirements.txt as its `pip` environment, and runs the same command line on the
cluster: `python -m pipeline.cli train|sweep CONFIG ...`. The config is checked here first (schema
and values; data paths are the cluster's business). Ray clusters with token authentication get the
token as an `Authorization: Bearer` header, from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token; a missing or refused token, or no dashboard at the address, is a one-line error.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import time
from pathlib import Path

from pipeline.config import ConfigError, load_config, resolve_path
from pipeline.sweeps.spec import load_sweep

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Never shipped with a job: outputs, data, environments and caches (Ray also honours .gitignore).
EXCLUDES = [".git", ".venv", "venv", "runs", "sweeps", "data", "mlruns", "mlartifacts", "*.db", "*.arrow",
            "__pycache__", "*.egg-info", ".pytest_cache", "build"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def requirements() -> list[str]:
    lines = (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.lstrip().startswith("#")]


def token_path() -> Path:
    """The Ray token's file: RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (where Ray reads it too)."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def read_token() -> tuple[str | None, str]:
    """(token, where it came from): RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    path = token_path()
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), str(path)
    return None, ""


def dashboard_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS", "")
    if not address.startswith(("http://", "https://")):
        raise ConfigError("--address: give the cluster's dashboard address, e.g. http://127.0.0.1:8265 (a remote "
                          f"cluster through `ray dashboard cluster.yaml`){f'; got {address!r}' if address else ''}")
    return address.rstrip("/")


@contextlib.contextmanager
def talking_to(address: str, token_source: str):
    """Turn the cluster's refusals into one-line errors that say what to do."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as e:  # the SDK's message starts with its status: 401 "required", 403 "failed"
        if str(e).startswith("Authentication failed"):
            raise ConfigError(f"--address: {address} refused the token from {token_source} (403 Forbidden): it is "
                              "not this cluster's token; set RAY_AUTH_TOKEN or ~/.ray/auth_token to the cluster's "
                              "token") from None
        raise ConfigError(f"--address: {address} requires a token and none was sent (401 Unauthorized); set "
                          "RAY_AUTH_TOKEN or put the cluster's token in ~/.ray/auth_token") from None
    except (requests.exceptions.ConnectionError, ConnectionError) as e:  # the SDK re-raises the builtin one
        raise ConfigError(f"--address: no Ray dashboard answers at {address} ({type(e).__name__})") from None
    except RuntimeError as e:  # the SDK's HTTP errors (an unknown job id, a refused submission)
        raise ConfigError(f"{address}: {str(e).strip().splitlines()[0]}") from None


class Jobs:
    """A JobSubmissionClient with the project's token handling and error messages."""

    def __init__(self, address: str | None):
        from ray.job_submission import JobSubmissionClient

        self.address = dashboard_address(address)
        token, self.token_source = read_token()
        # Without a token, an explicit None keeps the SDK from adding one from its own process-wide cache (it
        # would send a token this command never read); requests drops None headers, so nothing is sent.
        headers = {"Authorization": f"Bearer {token}" if token else None}
        with self.talking():
            self.client = JobSubmissionClient(self.address, headers=headers)

    def talking(self):
        return talking_to(self.address, self.token_source or "nowhere")

    def status(self, job_id: str) -> str:
        with self.talking():
            return str(self.client.get_job_status(job_id).value)

    def wait(self, job_id: str, log=print, timeout: float | None = None) -> str:
        """Poll until the job ends, printing each change of status."""
        last, deadline = None, None if timeout is None else time.time() + timeout
        while True:
            status = self.status(job_id)
            if status != last:
                log(f"{job_id}: {status}")
                last = status
            if status in TERMINAL or (deadline and time.time() > deadline):
                return status
            time.sleep(1.0)

    def follow(self, job_id: str, write=print) -> str:
        """Stream the job's logs until it ends; the final status."""

        async def tail():
            async for chunk in self.client.tail_job_logs(job_id):
                write(chunk.rstrip("\n"))

        with self.talking():
            asyncio.run(tail())
        return self.wait(job_id, log=lambda m: None)


def _shipped_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        raise ConfigError(f"CONFIG: {path} is outside the project ({PROJECT_ROOT}); submit ships the project "
                          "directory, so put the config under it (e.g. in tune_configs/)") from None


def submit(kind: str, config: str, sets: list[str], *, address: str | None, tracking_uri: str | None = None,
           follow: bool = False, wait: bool = True, pip: bool = True, log=print) -> int:
    """Check the config here, send the job, print its submission id; then wait for it or follow it."""
    path = resolve_path(config, "sweep" if kind == "sweep" else "config")
    rel = _shipped_path(path)
    if kind == "train":
        cfg = load_config(path, sets, local=False)
        cpus = cfg.ray.cpus_per_worker if cfg.backend == "local" else 1.0  # the driver, or all the compute
    else:
        if sets:
            raise ConfigError("--set: a sweep takes its overrides from the sweep file (set:)")
        load_sweep(path, local=False)
        cpus = 1.0  # the Tune driver; trials reserve their own resources
    args = ["python", "-m", "pipeline.cli", kind, rel, *[a for s in sets for a in ("--set", s)]]
    if tracking_uri:
        args += ["--tracking-uri", tracking_uri]
    entrypoint = shlex.join(args)
    jobs = Jobs(address)
    runtime_env = {"working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES}
    if pip:
        runtime_env["pip"] = requirements()
    job_id = f"metatrain-{kind}-{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    with jobs.talking():
        jobs.client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env,
                               entrypoint_num_cpus=cpus, metadata={"metatrain": kind, "config": rel})
    log(f"submitted {job_id} to {jobs.address}: {entrypoint}")
    if not wait:
        log(f"follow it with: metatrain jobs logs {job_id} --follow --address {jobs.address}")
        return 0
    status = jobs.follow(job_id, write=log) if follow else jobs.wait(job_id, log=log)
    log(f"{job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def jobs_command(action: str, job_id: str | None, *, address: str | None, follow: bool = False, log=print) -> int:
    jobs = Jobs(address)
    with jobs.talking():
        if action == "list":
            rows = sorted(jobs.client.list_jobs(), key=lambda j: j.start_time or 0)
            log(f"{'submission id':<52}{'status':<11}{'started':<21}entrypoint")
            for j in rows:
                started = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000))
                           if j.start_time else "")
                log(f"{str(j.submission_id):<52}{str(j.status.value):<11}{started:<21}{j.entrypoint[:80]}")
            return 0
        if action == "status":
            info = jobs.client.get_job_info(job_id)
            log(f"{job_id}: {info.status.value}{f' ({info.message})' if info.message else ''}")
            return 0
        if action == "logs":
            if follow:
                jobs.follow(job_id, write=log)
            else:
                log(jobs.client.get_job_logs(job_id).rstrip("\n"))
            return 0
        jobs.client.stop_job(job_id)  # "stop"
    log(f"{job_id}: stop requested")
    status = jobs.wait(job_id, log=log, timeout=120)
    return 0 if status in TERMINAL else 1
