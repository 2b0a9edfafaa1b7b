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
named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``) is sent as a bearer token, unless
``RAY_AUTH_MODE=disabled``. The token is not encrypted in transit: reach remote clusters through
an SSH tunnel, ``kubectl port-forward`` or a TLS proxy (``--header`` / ``--header-env`` add the
proxy's own headers). Variables copied with ``--env`` travel in the job's runtime_env: anyone
who can read the cluster's job API or dashboard can read them too. A submission that would send
the token, ``--env`` values or headers in plain http to a host other than this machine's loopback
is refused unless ``--insecure`` says to send them anyway (with a warning); https:// addresses
and loopback ones (a tunnel's local end) are sent as they are.

While waiting, the job's logs are streamed to stdout; Ctrl-C stops following (the job goes on).
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import sys
import time
from urllib.parse import urlsplit

from orl_fast.core.errors import UserError
from orl_fast.core.extras import require

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never uploaded with --working-dir (besides what the checkout's .gitignore excludes: Ray honours it).
UPLOAD_EXCLUDES = [".git", "runs", "orl-fast-demo", "benchmarks/out", "*.egg-info", "__pycache__",
                   ".pytest_cache", ".ruff_cache", ".import_linter_cache", "build", "dist"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def ray_auth_token() -> str | None:
    """The Ray token, looked up as Ray does (highest precedence first).

    1. ``RAY_AUTH_TOKEN``, when set and not blank;
    2. the file named by ``RAY_AUTH_TOKEN_PATH``, when that variable is set: a file that cannot
       be read or is empty is an error (Ray aborts on it too), never a silent fall-back;
    3. the default file ``~/.ray/auth_token``, when it exists and is not empty.

    ``RAY_AUTH_MODE=disabled`` sends no token at all (e.g. to a cluster that must not see it).
    """
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        return None
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
    if path:
        try:
            with open(os.path.expanduser(path)) as f:
                token = f.read().strip()
        except OSError as e:
            raise SystemExit(f"orl-fast submit: RAY_AUTH_TOKEN_PATH={path}: cannot read the "
                             f"token ({e.strerror})") from None
        if not token:
            raise SystemExit(f"orl-fast submit: RAY_AUTH_TOKEN_PATH={path}: the file is empty")
        return token
    default = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    try:
        with open(default) as f:
            return f.read().strip() or None
    except OSError:
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


def is_loopback(address: str) -> bool:
    """``address`` (a URL or host:port) names this machine's loopback interface (or ``auto``: the
    cluster Ray finds on this machine)."""
    if address == "auto":
        return True
    host = urlsplit(address if "://" in address else f"http://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(address: str, secrets: list[str], insecure: bool) -> None:
    """Refuse (UserError) to send ``secrets`` (what would travel: the token, --env values,
    headers) unencrypted to another host, unless ``insecure``; then warn."""
    if address.startswith("https://") or is_loopback(address):
        return
    what = ", ".join(secrets)
    if not secrets:
        print(f"orl-fast submit: warning: --address {address} is plain http to another host: "
              "the job's command and uploads travel unencrypted", file=sys.stderr)
        return
    if not insecure:
        raise UserError(f"--address {address}: plain http to another host would send {what} "
                        "unencrypted; use an https:// address (a TLS proxy) or an SSH tunnel to "
                        "127.0.0.1, or pass --insecure to send them anyway")
    print(f"orl-fast submit: warning: --insecure: sending {what} unencrypted to {address}",
          file=sys.stderr)


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
           timeout_s: float | None = None, insecure: bool = False) -> int:
    """Submit; with ``wait`` stream the logs and return 0 if the job succeeded, else 1.
    ``insecure``: send the token, --env values and headers over plain http to another host."""
    JobSubmissionClient = require("ray.job_submission", "ray", "orl-fast submit").JobSubmissionClient

    try:
        from ray.exceptions import AuthenticationError  # Ray >= 2.52
    except ImportError:  # pragma: no cover - older Ray
        AuthenticationError = RuntimeError

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    entrypoint = entrypoint_for(command, working_dir)
    runtime_env = build_runtime_env(working_dir, pip or [], env_names or [])
    headers = dict(headers or {})
    token = ray_auth_token()
    secrets = ([f"headers ({', '.join(sorted(headers))})"] if headers else [])
    if token and not any(h.lower() == "authorization" for h in headers):
        headers["Authorization"] = f"Bearer {token}"
        secrets.insert(0, "the Ray token")
    if env_names:
        secrets.append(f"--env values ({', '.join(env_names)})")
    check_transport(address, secrets, insecure)
    try:
        client = JobSubmissionClient(address, headers=headers or None)
        job = client.submit_job(
            entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id,
            entrypoint_num_cpus=num_cpus, entrypoint_num_gpus=num_gpus,
        )
    except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as e:
        # Unreachable address, 401/403 from the token check, a rejected request: say so, once.
        print(f"orl-fast submit: {address}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"submitted {job} to {address}", flush=True)
    if not wait:
        print(f"follow it with: ray job logs --address {address} --follow {job}")
        return 0
    try:
        status = follow(client, job, timeout_s)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job} keeps running "
              f"(stop it with: ray job stop --address {address} {job})", file=sys.stderr)
        return 130
    if status is None:
        client.stop_job(job)
        print(f"job {job}: stopped after {timeout_s} s")
        return 1
    if status == "SUCCEEDED":
        print(f"job {job}: {status}")
        return 0
    print(f"job {job}: {status}{_why(client, job)}")  # e.g. a runtime env that failed to build
    return 1


def _why(client, job: str) -> str:
    """The cluster's message on how a job ended (``": message"``), or "" when it has none; the
    tail of the logs Ray appends to it is left out (they were streamed already)."""
    try:
        message = client.get_job_info(job).message
    except Exception:  # noqa: BLE001 - only an explanation: never fail on it
        return ""
    message = (message or "").split(", last available logs", 1)[0].strip()
    return f": {message}" if message else ""


def follow(client, job: str, timeout_s: float | None = None, poll_s: float = 1.0) -> str | None:
    """Copy the job's logs to stdout until it ends; its final status, or None after timeout_s.

    The logs are streamed (``tail_job_logs``, a WebSocket, what ``ray job submit`` uses):
    fetching the whole log every second would move O(n^2) bytes over a days-long run. Where the
    stream is unavailable (e.g. a proxy without WebSockets), the full log is polled instead.
    """
    import asyncio
    import logging

    # Ray's SDK logs every normal close of the stream at INFO: not news to the user.
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    printed = [0]

    async def stream() -> None:
        async for chunk in client.tail_job_logs(job):
            sys.stdout.write(chunk)
            sys.stdout.flush()
            printed[0] += len(chunk)

    streamed = False
    try:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        asyncio.run(asyncio.wait_for(stream(), remaining))
        streamed = True  # the server ends the stream once the job has ended: logs complete
    except TimeoutError:  # asyncio.TimeoutError is TimeoutError on Python >= 3.11
        return None
    except Exception as e:  # noqa: BLE001 - any stream failure: fall back to polling
        print(f"orl-fast submit: log stream unavailable ({type(e).__name__}: {e}); polling",
              file=sys.stderr, flush=True)
    while True:
        status = str(client.get_job_status(job).value)
        if not streamed:
            logs = client.get_job_logs(job)
            sys.stdout.write(logs[printed[0]:])
            sys.stdout.flush()
            printed[0] = max(printed[0], len(logs))
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(poll_s)
