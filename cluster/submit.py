"""``orl-fast submit -- orl-fast mine ...``: run an orl-fast command as a Ray job on a cluster.

A thin wrapper over Ray's job submission API (what ``ray job submit`` does) that builds the
runtime environment orl-fast needs:

- ``--working-dir DIR`` uploads a checkout (data, runs and VCS folders excluded) and runs it with
  ``python -m orl_fast`` on the cluster; without it the cluster image must have orl-fast installed.
- ``--pip SPEC`` installs packages for the job (e.g. ``"orl-fast[all]"`` from your index).
- ``--env NAME`` copies the variable NAME from *your* environment into the job (credentials such
  as AWS_ACCESS_KEY_ID): secrets are never written into configs or command lines.

The address comes from ``--address``, else ``RAY_ADDRESS``, else the local default
``http://127.0.0.1:8265``. Authentication: Ray (>= 2.59 for local clusters, >= 2.61 for all)
protects its job API with a token; the one Ray itself would use (``RAY_AUTH_TOKEN``, the file
named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``) is sent as a bearer token. The token
is not encrypted in transit: reach remote clusters through an SSH tunnel, ``kubectl
port-forward`` or a TLS proxy (``--header`` / ``--header-env`` add the proxy's own headers).
"""

from __future__ import annotations

import os
import shlex
import sys
import time

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
UPLOAD_EXCLUDES = [".git", "runs", "orl-fast-demo", "benchmarks/out", "*.egg-info", "__pycache__",
                   ".dw*", ".whl", ".pytest_cache"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def ray_auth_token() -> str | None:
    """The Ray token, looked up as Ray does: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, default file."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.path.isfile(path):
        token = open(path).read().strip()
        return token or None
    return None


def build_runtime_env(working_dir: str | None, pip: list[str], env_names: list[str]) -> dict:
    runtime_env: dict = {}
    if working_dir:
        runtime_env["working_dir"] = os.path.abspath(working_dir)
        runtime_env["excludes"] = UPLOAD_EXCLUDES
    if pip:
        runtime_env["pip"] = pip
    missing = [n for n in env_names if n not in os.environ]
    if missing:
        raise SystemExit(f"orl-fast submit: --env {missing[0]} is not set in your environment")
    if env_names:
        runtime_env["env_vars"] = {n: os.environ[n] for n in env_names}
    return runtime_env


def entrypoint_for(command: list[str], working_dir: str | None) -> str:
    """The job's shell command; ``orl-fast`` becomes ``python -m orl_fast`` for uploaded code."""
    if not command:
        raise SystemExit("orl-fast submit: give the command after --, e.g. -- orl-fast mine ...")
    if working_dir and command[0] == "orl-fast":
        command = ["python", "-m", "orl_fast", *command[1:]]
    return shlex.join(command)


def submit(command: list[str], address: str | None = None, working_dir: str | None = None,
           pip: list[str] | None = None, env_names: list[str] | None = None,
           headers: dict[str, str] | None = None, job_id: str | None = None,
           wait: bool = True, num_cpus: float | None = None, num_gpus: float | None = None,
           timeout_s: float | None = None) -> int:
    """Submit; with ``wait`` stream the logs and return 0 if the job succeeded, else 1."""
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    headers = dict(headers or {})
    token = ray_auth_token()
    if token and not any(h.lower() == "authorization" for h in headers):
        headers["Authorization"] = f"Bearer {token}"
    client = JobSubmissionClient(address, headers=headers or None)
    job = client.submit_job(
        entrypoint=entrypoint_for(command, working_dir),
        runtime_env=build_runtime_env(working_dir, pip or [], env_names or []),
        submission_id=job_id, entrypoint_num_cpus=num_cpus, entrypoint_num_gpus=num_gpus,
    )
    print(f"submitted {job} to {address}", flush=True)
    if not wait:
        print(f"follow it with: ray job logs --address {address} --follow {job}")
        return 0
    printed = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = str(client.get_job_status(job).value)
        logs = client.get_job_logs(job)
        sys.stdout.write(logs[printed:])
        sys.stdout.flush()
        printed = len(logs)
        if status in TERMINAL:
            print(f"job {job}: {status}")
            return 0 if status == "SUCCEEDED" else 1
        if deadline is not None and time.monotonic() > deadline:
            client.stop_job(job)
            print(f"job {job}: stopped after {timeout_s} s")
            return 1
        time.sleep(1.0)
