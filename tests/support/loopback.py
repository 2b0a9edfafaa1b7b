"""A multi-node Ray cluster on this machine's loopback interface (tests, benchmarks, trying;
test scaffolding, not shipped).

Real ``ray start --block`` processes on 127.0.0.1, one per node, each its own raylet with its own
CPUs (and custom resources), in its own session (``start_new_session``) and with a short private
``--temp-dir`` under /tmp (Ray's Unix socket paths must stay short); :func:`stop` stops exactly
those processes again::

    head = start_head(tmp_path, num_cpus=1, dashboard=True)       # head.dashboard_url for jobs
    worker = start_worker(head, num_cpus=1, resources={"node2": 1})
    try:
        ...  # ray.init(address=head.address) / orl-fast mine --address {head.address}
    finally:
        stop(worker, head)

or from a shell (prints the address, stops the nodes on Ctrl-C)::

    cd tests && python -m support.loopback --nodes 2 --cpus 1

Every Ray server binds the loopback interface only: nodes run with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's single-machine mode, in which it takes the node IP
from the loopback interface), ``--node-ip-address 127.0.0.1``, the dashboard (when asked for)
on 127.0.0.1, and every port Ray would otherwise fix (client server 10001, dashboard agent
52365, ...) chosen free, so that concurrent runs do not collide. Ray's command line refuses
to join a second node in that mode; :func:`start_worker` lifts that check for its own ``ray
start`` process only (``LAUNCHER``). :func:`listening_addresses` lists the TCP sockets a set of
processes listens on, for asserting that nothing binds beyond 127.0.0.1.

Stopping: Ray moves its workers into process groups of their own and job entrypoints into new
sessions, so killing the ``ray start`` process group is not enough. Every process of a node
carries the variable ``ORL_LOOPBACK_RAY_NODE=<its temp dir>`` (inherited through raylet, workers
and jobs); :func:`stop` kills the node's process group, its descendants and every process with
that marker: SIGTERM, a grace period, then SIGKILL. Nothing else is touched (never ``ray stop``).

Token authentication: ``auth_token="..."`` starts the head with ``RAY_AUTH_MODE=token`` and the
token in a file (``RAY_AUTH_TOKEN_PATH``); without it the nodes run with ``RAY_AUTH_MODE=disabled``
so that a token file in ``~/.ray`` does not turn authentication on by surprise. ``node.client_env``
holds the variables a client process (driver, ``orl-fast submit``) needs to talk to the cluster.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from orl_fast.core.ray_runtime import free_port, require_dashboard, worker_pythonpath

MARKER = "ORL_LOOPBACK_RAY_NODE"
LOOPBACK = "127.0.0.1"

# `ray start` in this interpreter. For an extra node (argv[1] == "--join"), Ray's "multi-node
# clusters are not supported in single-machine mode" check is lifted for this process only: the
# CLI module sees ENABLE_RAY_CLUSTER=True, everything else (node IP, bind addresses) still sees
# the single-machine, loopback-only mode set by RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0.
LAUNCHER = """
import sys, types
import ray.scripts.scripts as scripts
if sys.argv[1:2] == ["--join"]:
    del sys.argv[1]
    from ray._private import ray_constants
    proxy = types.ModuleType("ray_constants")
    proxy.__dict__.update(ray_constants.__dict__)
    proxy.ENABLE_RAY_CLUSTER = True
    scripts.ray_constants = proxy
sys.argv = ["ray", "start", *sys.argv[1:]]
scripts.main()
"""


@dataclass
class Node:
    """One ``ray start --block`` process and everything it started."""

    proc: subprocess.Popen
    temp_dir: str
    log_path: str
    # Variables a client of this cluster needs (auth mode and token file, no usage stats).
    client_env: dict[str, str] = field(default_factory=dict)

    def pids(self) -> set[int]:
        """Live processes of this node: group, descendants and marked processes."""
        return _node_pids(self)

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Head(Node):
    address: str = ""  # GCS address, 127.0.0.1:PORT (ray.init(address=...), ray start --address)
    dashboard_url: str | None = None  # http://127.0.0.1:PORT (job submission) or None


@dataclass
class Worker(Node):
    head: Head | None = None


def _ray_env(temp_dir: str, auth_token_path: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=worker_pythonpath())
    env.setdefault("OMP_NUM_THREADS", "1")
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        env.pop(name, None)
    env.update({
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # single-machine mode: loopback binds only
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token" if auth_token_path else "disabled",
        MARKER: temp_dir,
    })
    if auth_token_path:
        env["RAY_AUTH_TOKEN_PATH"] = auth_token_path
    return env


def _client_env(env: dict[str, str]) -> dict[str, str]:
    keep = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_USAGE_STATS_ENABLED")
    return {k: env[k] for k in keep if k in env}


def _port_args(head: bool) -> list[str]:
    """Every port Ray would otherwise fix (or share between nodes) chosen free."""
    args = ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port())]
    if head:
        args += ["--ray-client-server-port", str(free_port())]
    return args


def _launch(args: list[str], env: dict[str, str], temp_dir: str, log_path: str,
            join: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-c", LAUNCHER, *(["--join"] if join else []), "--block",
           "--node-ip-address", LOOPBACK, "--temp-dir", temp_dir, "--disable-usage-stats",
           "--log-style", "record", "--log-color", "false", *args]
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _wait_started(node: Node, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Ray runtime started" in node.log():
            return
        if node.proc.poll() is not None:
            break
        time.sleep(0.25)
    log = node.log()
    stop(node)
    raise RuntimeError(f"{what} did not start (rc={node.proc.returncode}):\n{log[-4000:]}")


def wait_http(url: str, timeout: float = 60.0, token: str | None = None) -> None:
    """Wait until ``url`` answers HTTP 200 (sending ``token`` as a bearer token)."""
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            error = e
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s: {error}")


def start_head(tmp: str | os.PathLike, num_cpus: int = 1, dashboard: bool = False,
               resources: dict[str, float] | None = None, auth_token: str | None = None,
               object_store_mb: int = 128, timeout: float = 120.0) -> Head:
    """A Ray head on 127.0.0.1; ``tmp`` holds its log (and token file). Stop it with stop()."""
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix="orlray-", dir="/tmp")
    token_path = None
    if auth_token:
        token_path = str(tmp / "ray-auth-token")
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(auth_token)
    env = _ray_env(temp_dir, token_path)
    port = free_port()
    args = ["--head", "--port", str(port), "--num-cpus", str(num_cpus), "--num-gpus", "0",
            "--object-store-memory", str(object_store_mb << 20), *_port_args(head=True)]
    dashboard_url = None
    if dashboard:
        require_dashboard("a loopback head with its dashboard")
        dash_port = free_port()
        args += ["--include-dashboard", "true", "--dashboard-host", LOOPBACK,
                 "--dashboard-port", str(dash_port)]
        dashboard_url = f"http://{LOOPBACK}:{dash_port}"
    else:
        args += ["--include-dashboard", "false"]
    if resources:
        args += ["--resources", json.dumps(resources)]
    log_path = str(tmp / f"ray-head-{port}.log")
    proc = _launch(args, env, temp_dir, log_path, join=False)
    head = Head(proc=proc, temp_dir=temp_dir, log_path=log_path, client_env=_client_env(env),
                address=f"{LOOPBACK}:{port}", dashboard_url=dashboard_url)
    _wait_started(head, timeout, "Ray head")
    if dashboard_url:
        try:
            wait_http(f"{dashboard_url}/api/version", timeout=timeout, token=auth_token)
        except TimeoutError:
            stop(head)
            raise
    return head


def start_worker(head: Head, num_cpus: int = 1, resources: dict[str, float] | None = None,
                 object_store_mb: int = 128, timeout: float = 120.0) -> Worker:
    """A second Ray node on 127.0.0.1 joining ``head`` (its own temp dir and log)."""
    temp_dir = tempfile.mkdtemp(prefix="orlray-", dir="/tmp")
    env = _ray_env(temp_dir, head.client_env.get("RAY_AUTH_TOKEN_PATH"))
    args = ["--address", head.address, "--num-cpus", str(num_cpus), "--num-gpus", "0",
            "--object-store-memory", str(object_store_mb << 20), *_port_args(head=False)]
    if resources:
        args += ["--resources", json.dumps(resources)]
    log_path = str(Path(head.log_path).with_name(f"ray-worker-{os.path.basename(temp_dir)}.log"))
    proc = _launch(args, env, temp_dir, log_path, join=True)
    worker = Worker(proc=proc, temp_dir=temp_dir, log_path=log_path,
                    client_env=_client_env(env), head=head)
    _wait_started(worker, timeout, "Ray worker node")
    return worker


# --- processes ---------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, pgid, state) of a process, None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[2]), rest[0]


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _has_marker(pid: int, value: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER}={value}".encode() in environ.split(b"\0")


def _process_table() -> dict[int, tuple[int, int, str]]:
    return {pid: st for pid in _all_pids() if (st := _stat(pid)) is not None}


def _descendants(root: int, table: dict[int, tuple[int, int, str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def descendants(root: int) -> set[int]:
    """``root`` and every live process below it."""
    table = _process_table()
    return {pid for pid in _descendants(root, table) if table[pid][2] != "Z"}


def _node_pids(node: Node) -> set[int]:
    root = node.proc.pid
    table = _process_table()
    found = {pid for pid, (_, pgid, _) in table.items() if pgid == root}
    found |= _descendants(root, table)
    found |= {pid for pid in table if pid not in found and _has_marker(pid, node.temp_dir)}
    return {pid for pid in found if table.get(pid, (0, 0, "Z"))[2] != "Z" and pid != os.getpid()}


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop(*nodes: Node, grace: float = 5.0) -> None:
    """Stop the nodes (workers before their head): SIGTERM, ``grace`` seconds, then SIGKILL.

    Only the nodes' own processes are signalled (their process groups, descendants and the
    processes carrying their marker); the temp dirs are removed afterwards.
    """
    for node in nodes:
        pids = node.pids()
        try:
            os.killpg(node.proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        _signal(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and node.pids():
            time.sleep(0.2)
        for _ in range(20):
            left = node.pids()
            if not left:
                break
            try:
                os.killpg(node.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            _signal(left, signal.SIGKILL)
            time.sleep(0.2)
        try:
            node.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(node.temp_dir, ignore_errors=True)


# --- sockets -----------------------------------------------------------------------------------

def _parse_addr(hex_addr: str) -> tuple[str, int]:
    ip_hex, port_hex = hex_addr.split(":")
    raw = bytes.fromhex(ip_hex)
    # /proc/net/tcp{,6}: the address as 32-bit words in host (little-endian) order.
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw)), int(port_hex, 16)


def _listening_inodes() -> dict[int, tuple[str, int]]:
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A":  # TCP_LISTEN
                out[int(cols[9])] = _parse_addr(cols[1])
    return out


def listening_addresses(pids) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP socket in LISTEN state held by one of ``pids``."""
    listening = _listening_inodes()
    found = []
    for pid in sorted(set(pids)):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in listening:
                    found.append((pid, *listening[inode]))
    return sorted(set(found))


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> None:
    """``python -m support.loopback`` (from tests/): start a head and N - 1 nodes, print the address, wait."""
    import argparse

    ap = argparse.ArgumentParser(description="a Ray cluster of N nodes on 127.0.0.1")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=1, help="CPUs per node")
    ap.add_argument("--dashboard", action="store_true", help="job API on 127.0.0.1")
    ap.add_argument("--logs", default=tempfile.gettempdir(), help="directory for node logs")
    args = ap.parse_args(argv)
    head = start_head(args.logs, num_cpus=args.cpus, dashboard=args.dashboard,
                      resources={"loopback_node_0": 1})
    nodes: list[Node] = [head]
    try:
        for i in range(1, args.nodes):
            nodes.insert(0, start_worker(head, num_cpus=args.cpus,
                                         resources={f"loopback_node_{i}": 1}))
        env = " ".join(f"{k}={v}" for k, v in head.client_env.items())
        print(f"{args.nodes} nodes on 127.0.0.1; address {head.address}"
              + (f", dashboard {head.dashboard_url}" if head.dashboard_url else ""))
        print(f"  {env} orl-fast mine --address {head.address} ...", flush=True)
        print("Ctrl-C stops the nodes.", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop(*nodes)


if __name__ == "__main__":
    main()
