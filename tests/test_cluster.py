"""cluster/: the Ray cluster launcher YAML, the KubeRay RayJob, the README, and `orl-fast submit`.

Fast tests check the files' structure and safety properties (GPU group, loopback dashboard,
token auth, credentials only through secretKeyRef, no literal secrets), that what the README
names exists, and submit.py's pieces (token lookup, runtime env, entrypoint, the CLI, the
follow loop against a fake job client). The slow tests submit real jobs to a Ray head started
on 127.0.0.1 with its dashboard and token authentication (tests/support/loopback.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
import tomllib
import urllib.error
import urllib.request
from importlib import resources
from typing import ClassVar

import pytest
import yaml
from support.common import REPO, orl_fast_cmd, require_full_ray, subprocess_env

from cluster import submit as sub
from orl_fast.cli import build_parser, main
from orl_fast.core.config import load_config
from orl_fast.core.defaults import MineConfig, TrainConfig
from orl_fast.core.errors import UserError

CLUSTER = REPO / "cluster"
SECRET_NAMES = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
# Literal credentials: an AWS access key id, or NAME=value / NAME: value for a secret variable.
LITERAL_SECRET = re.compile(
    r"AKIA[0-9A-Z]{16}"
    r"|(?:AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|AWS_ACCESS_KEY_ID|RAY_AUTH_TOKEN)"
    r"\s*(?:=|:)\s*(?!\s*$)[\"']?[A-Za-z0-9/+]{8,}")


def _load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def _flag_values(command: str, flag: str) -> list[str]:
    """Values of ``--flag=V`` / ``--flag V`` in a shell command line."""
    words = shlex.split(command.replace(";", " ; "))
    out = []
    for i, w in enumerate(words):
        if w.startswith(flag + "="):
            out.append(w.split("=", 1)[1])
        elif w == flag and i + 1 < len(words):
            out.append(words[i + 1])
    return out


def _walk(node, path=()):
    """(path, value) of every scalar in a parsed YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, (*path, str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, (*path, str(i)))
    else:
        yield path, node


# --- ray-cluster.yaml ------------------------------------------------------------------------

def test_cluster_yaml_groups_and_resources():
    c = _load("ray-cluster.yaml")
    types = c["available_node_types"]
    assert c["provider"]["type"] == "aws" and c["head_node_type"] in types
    head = types[c["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    workers = {n: t for n, t in types.items() if n != c["head_node_type"]}
    gpu = [t for t in workers.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    cpu = [t for t in workers.values() if not t.get("resources", {}).get("GPU")]
    assert len(gpu) == 1 and len(cpu) == 1, workers
    assert cpu[0]["resources"]["CPU"] >= 8 and gpu[0]["resources"]["CPU"] >= 8
    for t in workers.values():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= c["max_workers"]
        assert t["node_config"]["InstanceType"]
    assert sum(t["max_workers"] for t in workers.values()) <= c["max_workers"]


def test_cluster_yaml_installs_orl_fast_and_binds_the_dashboard_to_loopback():
    c = _load("ray-cluster.yaml")
    setup = " ".join(c["setup_commands"])
    assert "pip install" in setup and "orl-fast[all]" in setup
    head = " ".join(c["head_start_ray_commands"])
    assert "ray start --head" in head
    hosts = _flag_values(head, "--dashboard-host")
    assert hosts == ["127.0.0.1"]
    # Token authentication on every node, the token shipped as a file (never as a value).
    for cmd in (head, " ".join(c["worker_start_ray_commands"])):
        assert "RAY_AUTH_MODE=token" in cmd and "RAY_AUTH_TOKEN=" not in cmd
    assert c["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(c["worker_start_ray_commands"])


def test_cluster_yaml_validates_against_rays_launcher_schema():
    util = pytest.importorskip("ray.autoscaler._private.util")
    config = util.prepare_config(_load("ray-cluster.yaml"))  # fills the launcher's defaults
    util.validate_config(config)  # raises on any field Ray's schema does not know


# --- rayjob.yaml -----------------------------------------------------------------------------

def _containers(spec: dict) -> list[dict]:
    return spec["template"]["spec"]["containers"]


def test_rayjob_structure():
    job = _load("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    # The dashboard host, where set, is loopback; the head's Service stays inside the cluster.
    assert head["rayStartParams"].get("dashboard-host", "127.0.0.1") == "127.0.0.1"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
    gpu = _containers(groups["gpu"])[0]["resources"]
    assert int(gpu["limits"]["nvidia.com/gpu"]) >= 1
    cpu = _containers(groups["cpu"])[0]["resources"]
    assert "nvidia.com/gpu" not in cpu["limits"] and int(cpu["limits"]["cpu"]) >= 1


def test_rayjob_entrypoint_is_a_valid_orl_fast_command():
    entrypoint = shlex.split(_load("rayjob.yaml")["spec"]["entrypoint"])
    assert entrypoint[0] == "orl-fast"
    args, extra = build_parser().parse_known_args(entrypoint[1:])
    assert args.command == "mine" and not extra
    cfg = args.load(args)  # every override names a real field, validated
    for url in (cfg.data, cfg.ckpt, cfg.out):
        assert url.startswith("s3://")


def test_rayjob_credentials_only_from_secrets():
    job = _load("rayjob.yaml")
    cluster = job["spec"]["rayClusterSpec"]
    envs = 0
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        for container in _containers(group):
            names = {e["name"] for e in container["env"]}
            assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names
            for e in container["env"]:
                envs += 1
                if SECRET_NAMES.search(e["name"]) or e["name"].startswith("AWS_"):
                    assert "value" not in e, e
                    ref = e["valueFrom"]["secretKeyRef"]
                    assert ref["name"] and ref["key"], e
    assert envs >= 6


@pytest.mark.parametrize("name", ["ray-cluster.yaml", "rayjob.yaml"])
def test_no_literal_secrets(name):
    text = (CLUSTER / name).read_text()
    assert not LITERAL_SECRET.search(text), LITERAL_SECRET.search(text)
    for path, value in _walk(yaml.safe_load(text)):
        key = path[-1] if path else ""
        is_path = isinstance(value, str) and value.startswith(("~/", "/", "./"))
        if isinstance(value, str) and SECRET_NAMES.search(key) and key != "key" and not is_path:
            pytest.fail(f"{name}: {'.'.join(path)} holds a literal value")
        if isinstance(value, str):
            assert not re.search(r"(SECRET|TOKEN|PASSWORD)\w*=[^$\s]", value), (path, value)


def test_literal_secret_scan_catches_literals():
    assert LITERAL_SECRET.search("export AWS_SECRET_ACCESS_KEY=abcdEFGH1234/xyz")
    assert LITERAL_SECRET.search("AWS_ACCESS_KEY_ID: AKIAABCDEFGHIJKLMNOP")
    assert not LITERAL_SECRET.search("- name: AWS_SECRET_ACCESS_KEY\n  valueFrom:")


def test_shipped_as_package_data():
    files = resources.files("cluster")
    for name in ("ray-cluster.yaml", "rayjob.yaml", "README.md"):
        assert files.joinpath(name).is_file(), name
    assert yaml.safe_load(files.joinpath("rayjob.yaml").read_text())["kind"] == "RayJob"
    with open(REPO / "pyproject.toml", "rb") as f:
        pyproject = tomllib.load(f)
    assert "cluster" in pyproject["tool"]["setuptools"]["packages"]
    data = pyproject["tool"]["setuptools"]["package-data"]["cluster"]
    assert "*.yaml" in data and "*.md" in data


# --- README ----------------------------------------------------------------------------------

def _submit_flags() -> set[str]:
    parser = build_parser()
    sub_action = next(a for a in parser._actions if hasattr(a, "choices") and a.choices)
    return {s for a in sub_action.choices["submit"]._actions for s in a.option_strings}


def _readme_submit_options(text: str) -> set[str]:
    """Options given to `orl-fast submit` in the README: its flag table and its commands."""
    found = set()
    for line in text.splitlines():
        if line.startswith("| `--"):
            found |= set(re.findall(r"--[a-z][a-z-]+", line.split("|")[1]))
        for m in re.finditer(r"orl-fast submit(.*?)(?:\s--(?:\s|$)|\\|`|$)", line):
            found |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", m.group(1)))
    return found


def test_readme_names_only_real_flags_and_fields():
    text = (CLUSTER / "README.md").read_text()
    mentioned = _readme_submit_options(text)
    assert {"--address", "--working-dir", "--pip", "--env", "--header", "--header-env",
            "--submission-id", "--num-cpus", "--num-gpus", "--no-wait"} <= mentioned
    assert mentioned <= _submit_flags(), mentioned - _submit_flags()
    # Every config field the README names exists; every override it shows is valid.
    sections = {"train": TrainConfig, "mine": MineConfig}
    for section, field in set(re.findall(r"\b(train|mine)\.([a-z_]+)", text)):
        assert field in sections[section].__dataclass_fields__, f"{section}.{field}"
    overrides = set(re.findall(r"\b(?:train|mine|ingest|orl)\.[a-z_]+=[\w.]+", text))
    assert len(overrides) >= 6
    for override in overrides:
        load_config("paper", [override])  # ConfigError names a wrong field or value
    for name in ("ray-cluster.yaml", "rayjob.yaml", "submit.py"):
        assert (CLUSTER / name).is_file() and name in text
    assert (REPO / "orl_fast" / "core" / "ray_runtime.py").is_file()
    assert "orl_fast/core/ray_runtime.py" in text


# --- submit.py: token, runtime env, entrypoint ------------------------------------------------

@pytest.fixture
def home(tmp_path, monkeypatch):
    """HOME in a temp dir and no Ray auth variables: ~/.ray/auth_token is ours to write."""
    h = tmp_path / "home"
    (h / ".ray").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(h))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    return h


def test_token_lookup_order(home, tmp_path, monkeypatch):
    assert sub.ray_auth_token() is None
    (home / ".ray" / "auth_token").write_text("")
    assert sub.ray_auth_token() is None  # an empty default file: no token
    (home / ".ray" / "auth_token").write_text("default-token\n")
    assert sub.ray_auth_token() == "default-token"
    path = tmp_path / "token-file"
    path.write_text("  file-token \n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert sub.ray_auth_token() == "file-token"  # the named file before the default one
    monkeypatch.setenv("RAY_AUTH_TOKEN", "   ")
    assert sub.ray_auth_token() == "file-token"  # a blank variable does not count
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert sub.ray_auth_token() == "env-token"  # the variable before both files
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert sub.ray_auth_token() is None


def test_token_path_that_cannot_be_read_is_an_error(home, tmp_path, monkeypatch):
    (home / ".ray" / "auth_token").write_text("default-token")
    missing = tmp_path / "no-such-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(missing))
    with pytest.raises(SystemExit, match="RAY_AUTH_TOKEN_PATH=.*no-such-token"):
        sub.ray_auth_token()  # never a silent fall-back to the default file
    missing.write_text("\n")
    with pytest.raises(SystemExit, match="empty"):
        sub.ray_auth_token()


def test_build_runtime_env(tmp_path, monkeypatch):
    assert sub.build_runtime_env(None, [], []) == {}
    monkeypatch.setenv("ORL_TEST_A", "a-value")
    monkeypatch.setenv("ORL_TEST_B", "")
    monkeypatch.chdir(tmp_path)
    env = sub.build_runtime_env("checkout", ["orl-fast[all]", "boto3"], ["ORL_TEST_A",
                                                                          "ORL_TEST_B"])
    assert env["working_dir"] == str(tmp_path / "checkout")
    assert {".git", "runs", "__pycache__", "*.egg-info"} <= set(env["excludes"])
    assert env["pip"] == ["orl-fast[all]", "boto3"]
    assert env["env_vars"] == {"ORL_TEST_A": "a-value", "ORL_TEST_B": ""}
    assert "excludes" not in sub.build_runtime_env(None, ["x"], [])


def test_missing_env_var_fails_naming_it(monkeypatch):
    monkeypatch.setenv("ORL_TEST_A", "a")
    monkeypatch.delenv("ORL_TEST_MISSING", raising=False)
    with pytest.raises(SystemExit, match="--env ORL_TEST_MISSING is not set"):
        sub.build_runtime_env(None, [], ["ORL_TEST_A", "ORL_TEST_MISSING"])


def test_entrypoint_for():
    cmd = ["orl-fast", "mine", "--config", "paper", "data=s3://b/my shards"]
    assert sub.entrypoint_for(cmd, "repo") == \
        "python -m orl_fast mine --config paper 'data=s3://b/my shards'"
    assert sub.entrypoint_for(cmd, None) == "orl-fast mine --config paper 'data=s3://b/my shards'"
    assert sub.entrypoint_for(["python", "x.py", "orl-fast"], "repo") == "python x.py orl-fast"
    with pytest.raises(SystemExit, match="after --"):
        sub.entrypoint_for([], None)


# --- the CLI ---------------------------------------------------------------------------------

def test_cli_passes_everything_after_dashes_verbatim(monkeypatch):
    seen = {}

    def fake_submit(command, **kw):
        seen.update(kw, command=command)
        return 0

    monkeypatch.setattr(sub, "submit", fake_submit)
    monkeypatch.setenv("ORL_TEST_PROXY", "Bearer from-env")
    argv = ["submit", "--address", "http://127.0.0.1:9", "--working-dir", ".", "--pip", "a",
            "--pip", "b", "--env", "X", "--env", "Y", "--header", "X-One=1=2",
            "--header-env", "Proxy-Authorization=ORL_TEST_PROXY", "--job-id", "j1",
            "--num-cpus", "2", "--num-gpus", "0.5", "--no-wait",
            "--", "orl-fast", "mine", "--config", "paper", "--address", "auto", "data=s3://b",
            "ckpt=s3://b/stage1", "out=s3://b/mined"]
    assert main(argv) == 0
    assert seen["command"] == ["orl-fast", "mine", "--config", "paper", "--address", "auto",
                               "data=s3://b", "ckpt=s3://b/stage1", "out=s3://b/mined"]
    assert seen["address"] == "http://127.0.0.1:9" and seen["working_dir"] == "."
    assert seen["pip"] == ["a", "b"] and seen["env_names"] == ["X", "Y"]
    assert seen["headers"] == {"X-One": "1=2", "Proxy-Authorization": "Bearer from-env"}
    assert seen["job_id"] == "j1" and seen["num_cpus"] == 2.0 and seen["num_gpus"] == 0.5
    assert seen["wait"] is False


@pytest.mark.parametrize("job, message", [
    (["orl-fast", "pretrain", "--data", "s3://b", "out=s3://r", "train.bacth_size=64"],
     "train.bacth_size: unknown field"),
    (["python", "-m", "orl_fast", "train", "data=s3://b", "out=s3://r"], "pairs: required"),
    (["orl-fast", "mine", "--config", "nosuch", "data=a", "ckpt=b", "out=c"], "not a file"),
])
def test_submit_refuses_an_invalid_config_locally(job, message, monkeypatch, capsys):
    monkeypatch.setattr(sub, "submit", lambda *a, **k: pytest.fail("submitted"))
    assert main(["submit", "--address", "http://127.0.0.1:9", "--", *job]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_submit_checks_flags_and_yaml_of_the_job(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sub, "submit", lambda *a, **k: 0)
    with pytest.raises(SystemExit) as e:
        main(["submit", "--", "orl-fast", "pretrain", "--no-such-flag"])
    assert e.value.code == 2 and "--no-such-flag" in capsys.readouterr().err
    (tmp_path / "job.yaml").write_text("train:\n  epochs: 0\n")
    assert main(["submit", "--working-dir", str(tmp_path), "--", "orl-fast", "pretrain",
                 "--config", "job.yaml", "data=a", "out=b"]) == 2  # read from the checkout
    assert "train.epochs: must be > 0" in capsys.readouterr().err
    assert main(["submit", "--", "orl-fast", "pretrain", "--config", "/cluster/job.yaml",
                 "data=a", "out=b"]) == 0  # not here: the overrides are checked alone
    assert "only the overrides are checked" in capsys.readouterr().err
    assert main(["submit", "--", "python", "train.py", "--anything"]) == 0  # not orl-fast


def test_submission_id_with_job_id_as_its_alias(monkeypatch):
    seen = []
    monkeypatch.setattr(sub, "submit", lambda command, **kw: seen.append(kw["job_id"]) or 0)
    for flag in ("--submission-id", "--job-id"):
        assert main(["submit", flag, "run-7", "--", "python", "-c", "pass"]) == 0
    assert seen == ["run-7", "run-7"]


@pytest.mark.parametrize("argv, message", [
    (["--header", "no-equals-sign"], "--header 'no-equals-sign': expected NAME=VALUE"),
    (["--header-env", "Authorization"], "expected NAME=VAR"),
    (["--header-env", "Authorization=ORL_TEST_UNSET"], "$ORL_TEST_UNSET is not set"),
])
def test_cli_header_errors(argv, message, monkeypatch):
    monkeypatch.delenv("ORL_TEST_UNSET", raising=False)
    monkeypatch.setattr(sub, "submit", lambda *a, **k: pytest.fail("submitted"))
    with pytest.raises(SystemExit) as e:
        main(["submit", *argv, "--", "python", "-c", "pass"])
    assert message in str(e.value)


# --- submit() and follow() against a fake job client ------------------------------------------

class FakeClient:
    """What submit() uses of ray.job_submission.JobSubmissionClient."""

    instances: ClassVar[list[FakeClient]] = []

    def __init__(self, address, headers=None, statuses=("SUCCEEDED",), chunks=("out\n",),
                 stream_error=None, logs=None, hang=False):
        self.address, self.headers = address, headers
        self.statuses, self.chunks = list(statuses), list(chunks)
        self.stream_error, self.hang = stream_error, hang
        self.logs = "".join(chunks) if logs is None else logs
        self.submitted, self.stopped, self.log_calls = None, False, 0
        FakeClient.instances.append(self)

    def submit_job(self, **kw):
        self.submitted = kw
        return kw["submission_id"] or "raysubmit_fake"

    async def tail_job_logs(self, job):
        import asyncio

        for chunk in self.chunks:
            yield chunk
        if self.stream_error:
            raise self.stream_error
        while self.hang:
            await asyncio.sleep(0.05)

    def get_job_status(self, job):
        from types import SimpleNamespace

        return SimpleNamespace(value=self.statuses.pop(0) if len(self.statuses) > 1
                               else self.statuses[0])

    def get_job_logs(self, job):
        self.log_calls += 1
        return self.logs

    def stop_job(self, job):
        self.stopped = True

    def get_job_info(self, job):
        from types import SimpleNamespace

        return SimpleNamespace(message="Job entrypoint command failed with exit code 3")


@pytest.fixture
def fake_client(monkeypatch, home):
    """fake_client(**behaviour): JobSubmissionClient replaced by FakeClient(**behaviour)."""
    import ray.job_submission

    FakeClient.instances.clear()

    def install(**behaviour):
        monkeypatch.setattr(ray.job_submission, "JobSubmissionClient",
                            lambda address, headers=None: FakeClient(address, headers,
                                                                     **behaviour))
    return install


def test_submit_sends_the_token_and_streams_logs(fake_client, home, capsys, monkeypatch):
    fake_client(chunks=["line 1\n", "line 2\n"])
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok")
    monkeypatch.setenv("ORL_TEST_A", "a")
    rc = sub.submit(["orl-fast", "mine", "data=s3://b"], address="http://127.0.0.1:9",
                    working_dir=str(home), env_names=["ORL_TEST_A"], job_id="j1")
    client = FakeClient.instances[-1]
    assert rc == 0 and client.headers == {"Authorization": "Bearer tok"}
    assert client.submitted["entrypoint"] == "python -m orl_fast mine data=s3://b"
    assert client.submitted["runtime_env"]["env_vars"] == {"ORL_TEST_A": "a"}
    assert client.log_calls == 0  # streamed, never the whole log again
    out = capsys.readouterr().out
    assert "submitted j1 to http://127.0.0.1:9" in out and "line 1\nline 2\n" in out
    assert "job j1: SUCCEEDED" in out


def test_submit_keeps_a_given_authorization_header(fake_client, monkeypatch):
    fake_client()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok")
    assert sub.submit(["true"], address="https://x", headers={"authorization": "Basic abc"}) == 0
    assert FakeClient.instances[-1].headers == {"authorization": "Basic abc"}


@pytest.mark.parametrize("address, sent", [
    ("http://10.0.0.1:8265", False), ("10.0.0.1:8265", False), ("ray://head:10001", False),
    ("http://127.0.0.1:8265", True), ("http://localhost:8265", True), ("http://[::1]:8265", True),
    ("https://ray.example.org", True), ("auto", True),
])
def test_plain_http_to_another_host_refuses_to_send_secrets(fake_client, monkeypatch, capsys,
                                                            address, sent):
    fake_client()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok")
    if sent:
        assert sub.submit(["true"], address=address) == 0
        assert FakeClient.instances[-1].headers == {"Authorization": "Bearer tok"}
        return
    with pytest.raises(UserError, match=rf"--address {re.escape(address)}: plain http to another "
                                        "host would send the Ray token unencrypted"):
        sub.submit(["true"], address=address)
    assert not FakeClient.instances  # nothing was sent
    assert sub.submit(["true"], address=address, insecure=True) == 0
    assert "--insecure: sending the Ray token unencrypted" in capsys.readouterr().err


def test_plain_http_names_every_secret_and_warns_without_them(fake_client, monkeypatch, capsys):
    fake_client()
    monkeypatch.setenv("ORL_TEST_A", "a")
    with pytest.raises(UserError, match=r"would send headers \(X-Proxy\), --env values "
                                        r"\(ORL_TEST_A\) unencrypted"):
        sub.submit(["true"], address="http://10.0.0.1:8265", env_names=["ORL_TEST_A"],
                   headers={"X-Proxy": "p"})
    assert sub.submit(["true"], address="http://10.0.0.1:8265") == 0  # nothing secret: a warning
    assert "plain http to another host" in capsys.readouterr().err


def test_cli_refusal_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok")
    pytest.importorskip("ray.job_submission")
    assert main(["submit", "--address", "http://192.0.2.1:8265", "--", "true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("orl-fast: --address http://192.0.2.1:8265: plain http") and \
        "\n" not in err


def test_submit_uses_ray_address_and_sends_no_header_without_token(fake_client, monkeypatch):
    fake_client()
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.1:8265")
    assert sub.submit(["true"]) == 0
    client = FakeClient.instances[-1]
    assert client.address == "http://10.0.0.1:8265" and client.headers is None
    monkeypatch.delenv("RAY_ADDRESS")
    sub.submit(["true"])
    assert FakeClient.instances[-1].address == sub.DEFAULT_ADDRESS


def test_failed_job_returns_1_with_the_clusters_reason(fake_client, capsys):
    fake_client(statuses=["FAILED"])
    assert sub.submit(["false"], address="http://x", job_id="j2") == 1
    assert "job j2: FAILED: Job entrypoint command failed with exit code 3" in \
        capsys.readouterr().out


def test_the_reason_of_a_failed_job_leaves_out_the_logs_already_shown(fake_client, capsys,
                                                                        monkeypatch):
    from types import SimpleNamespace

    fake_client(statuses=["FAILED"], chunks=["Traceback ...\nValueError: boom\n"])
    message = ("Job entrypoint command failed with exit code 2, last available logs (truncated "
               "to 20,000 chars):\nTraceback ...\nValueError: boom\n")
    monkeypatch.setattr(FakeClient, "get_job_info",
                        lambda self, job: SimpleNamespace(message=message))
    assert sub.submit(["false"], address="http://x", job_id="j3") == 1
    out = capsys.readouterr().out
    assert out.count("ValueError: boom") == 1  # streamed once, not repeated in the reason
    assert "job j3: FAILED: Job entrypoint command failed with exit code 2" in out


def test_stream_failure_falls_back_to_polling(capsys):
    client = FakeClient("http://x", chunks=["abc"], stream_error=RuntimeError("no websockets"),
                        statuses=["RUNNING", "SUCCEEDED"], logs="abcdef\n")
    rc = sub.follow(client, "j", poll_s=0.01)
    captured = capsys.readouterr()
    assert rc == "SUCCEEDED"
    assert captured.out == "abcdef\n"  # streamed "abc", then only the rest from the poll
    assert "polling" in captured.err


def test_timeout_stops_the_job(fake_client, capsys):
    fake_client(hang=True, statuses=["RUNNING"])
    t = time.monotonic()
    assert sub.submit(["sleep", "1000"], address="http://x", timeout_s=0.3) == 1
    assert time.monotonic() - t < 10
    assert FakeClient.instances[-1].stopped and "stopped after" in capsys.readouterr().out


def test_unreachable_address_is_one_clean_error(home, capsys):
    pytest.importorskip("ray.job_submission")
    rc = sub.submit(["true"], address=f"http://127.0.0.1:{_closed_port()}")
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("orl-fast submit: http://127.0.0.1:")
    assert "Traceback" not in err


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again once returned: nothing listens there


# --- end to end: real jobs on a loopback head ------------------------------------------------

TOKEN = "orl-test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    require_full_ray("ray.job_submission")
    from support.loopback import start_head, stop

    h = start_head(tmp_path_factory.mktemp("ray-head"), num_cpus=2, dashboard=True,
                   auth_token=TOKEN)
    try:
        yield h
    finally:
        stop(h)


def _submit_env(tmp_path, **extra) -> dict[str, str]:
    """A client environment with no token anywhere but where ``extra`` puts one."""
    env = subprocess_env()
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        env.pop(name, None)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def _run_submit(head, env, *args, timeout=300):
    return subprocess.run(orl_fast_cmd("submit", "--address", head.dashboard_url, *args),
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          check=False)


@pytest.mark.slow
def test_e2e_env_var_through_a_proxy_header(head, tmp_path):
    # The token as a header read from the environment (how a TLS proxy's credential is given).
    env = _submit_env(tmp_path, SOME_VAR="hello from my environment",
                      MY_PROXY_AUTH=f"Bearer {TOKEN}")
    r = _run_submit(head, env, "--header-env", "Authorization=MY_PROXY_AUTH", "--env",
                    "SOME_VAR", "--", "python", "-c", "import os; print(os.environ['SOME_VAR'])")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hello from my environment" in r.stdout and "SUCCEEDED" in r.stdout


@pytest.mark.slow
def test_e2e_working_dir_upload_and_orl_fast_rewrite(head, tmp_path):
    work = tmp_path / "work"
    (work / "orl_fast").mkdir(parents=True)
    (work / "data.txt").write_text("uploaded data\n")
    (work / "script.py").write_text("print(open('data.txt').read().strip().upper())\n")
    # A stand-in orl_fast package: `orl-fast ...` must run the uploaded code, not an install.
    (work / "orl_fast" / "__init__.py").write_text("")
    (work / "orl_fast" / "__main__.py").write_text(textwrap.dedent("""
        import os, sys
        print("uploaded orl_fast", sys.argv[1:], os.path.exists("data.txt"),
              "runs:", os.path.exists("runs"))
    """))
    (work / "runs").mkdir()
    (work / "runs" / "big.bin").write_bytes(b"\0" * 1024)  # never uploaded (UPLOAD_EXCLUDES)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = _submit_env(tmp_path, RAY_AUTH_TOKEN_PATH=str(token_file))
    r = _run_submit(head, env, "--working-dir", str(work), "--", "python", "script.py")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "UPLOADED DATA" in r.stdout
    r = _run_submit(head, env, "--working-dir", str(work), "--", "orl-fast", "mine",
                    "--config", "paper", "data=s3://b/x", "ckpt=s3://b/c", "out=s3://b/o")
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("uploaded orl_fast ['mine', '--config', 'paper', 'data=s3://b/x', 'ckpt=s3://b/c', "
            "'out=s3://b/o'] True runs: False" in r.stdout)


@pytest.mark.slow
def test_e2e_failing_entrypoint_returns_1(head, tmp_path):
    env = _submit_env(tmp_path, RAY_AUTH_TOKEN=TOKEN)
    r = _run_submit(head, env, "--job-id", "orl-test-fail", "--", "python", "-c",
                    "raise SystemExit(3)")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "job orl-test-fail: FAILED: " in r.stdout and "exit code 3" in r.stdout, r.stdout


@pytest.mark.slow
def test_e2e_no_wait_returns_at_once(head, tmp_path):
    env = _submit_env(tmp_path, RAY_AUTH_TOKEN=TOKEN)
    r = _run_submit(head, env, "--no-wait", "--job-id", "orl-test-nowait", "--", "sleep", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "follow it with: ray job logs" in r.stdout and "orl-test-nowait" in r.stdout


@pytest.mark.slow
def test_e2e_wrong_or_missing_token_is_refused(head, tmp_path):
    for extra in ({"RAY_AUTH_TOKEN": "not-the-token"}, {}):
        env = _submit_env(tmp_path, **extra)
        r = _run_submit(head, env, "--", "python", "-c", "print('must not run')")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "must not run" not in r.stdout and "Traceback" not in r.stderr
        assert "orl-fast submit: " in r.stderr and "uthenticat" in r.stderr, r.stderr
    # The job API itself answers 401 without a token.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{head.dashboard_url}/api/jobs/", timeout=10)
    assert e.value.code == 401


@pytest.mark.slow
def test_e2e_orl_fast_mine_as_a_job(head, tmp_path, scene_shards):
    """`orl-fast submit -- orl-fast mine ...`: the job mines on its own cluster (RAY_ADDRESS)."""
    from support.mining import MINE, MODEL, make_ckpt

    shards, _ = scene_shards
    ckpt = make_ckpt(str(tmp_path / "stage1"))
    out = tmp_path / "mined"
    env = _submit_env(tmp_path, RAY_AUTH_TOKEN=TOKEN)
    r = _run_submit(head, env, "--", "orl-fast", "mine", "--config", "small", "--quiet",
                    *MODEL, *MINE, "mine.min_box_size=16", "mine.device=cpu",
                    f"data={shards}", f"ckpt={ckpt}", f"out={out}", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 48 and summary["pairs"]["records"] == 48
    nodes = set()
    for path in out.glob("units/*/*.json"):
        nodes.add(json.loads(path.read_text())["worker"]["ray_node"])
    assert len(nodes) == 1 and all(nodes), nodes  # units ran on Ray: this one-node cluster


@pytest.mark.slow
def test_e2e_every_listening_socket_is_loopback(head):
    """After the jobs above: no process of the cluster listens beyond 127.0.0.1."""
    from support.loopback import is_loopback, listening_addresses, process_name

    pids = head.pids()
    assert len(pids) > 5
    sockets = listening_addresses(pids)
    ports = {port for _, _, port in sockets}
    assert int(head.address.rsplit(":", 1)[1]) in ports  # the GCS
    assert int(head.dashboard_url.rsplit(":", 1)[1]) in ports  # the dashboard / job API
    wide = [(pid, ip, port, process_name(pid)) for pid, ip, port in sockets
            if not is_loopback(ip)]
    assert not wide, wide


def test_listening_addresses_sees_this_process(tmp_path):
    import socket

    from support.loopback import is_loopback, listening_addresses

    with socket.socket() as s4, socket.socket(socket.AF_INET6) as s6:
        s4.bind(("127.0.0.1", 0))
        s4.listen()
        s6.bind(("::1", 0))
        s6.listen()
        found = listening_addresses([os.getpid()])
        assert (os.getpid(), "127.0.0.1", s4.getsockname()[1]) in found
        assert (os.getpid(), "::1", s6.getsockname()[1]) in found
    assert is_loopback("::ffff:127.0.0.1") and is_loopback("127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1")
    assert sys.platform.startswith("linux")
