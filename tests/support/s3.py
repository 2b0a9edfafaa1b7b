"""An S3-compatible server on loopback for the object-storage tests (moto in server mode).

``s3_server`` (a session fixture in conftest) starts moto on 127.0.0.1 at a free port and points
every AWS client of this process and of its children (ingest workers, Ray workers, subprocesses)
at it through the standard variables: ``AWS_ENDPOINT_URL`` and dummy credentials. Each test
makes its own bucket with :func:`make_bucket`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from orl_fast.core.ray_runtime import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint: str

    def env(self) -> dict[str, str]:
        """The variables a child process needs to reach this server."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def make_bucket(self, prefix: str = "orl") -> str:
        """A new empty bucket; returns its URL ``s3://NAME``."""
        import boto3

        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=self.endpoint).create_bucket(Bucket=name)
        return f"s3://{name}"


def start_server() -> Iterator[S3Server]:
    """Run moto on 127.0.0.1 for the duration of the generator, with the environment set."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Server(f"http://127.0.0.1:{port}")
    saved = {k: os.environ.get(k) for k in s3.env()}
    os.environ.update(s3.env())
    try:
        yield s3
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def download_tree(url: str, local: str) -> None:
    """Copy every object under ``url`` into the local directory ``local``."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, use_listings_cache=False)
    for path in fs.find(root):
        rel = path[len(root.rstrip("/")) + 1:]
        dest = os.path.join(local, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        fs.get_file(path, dest)
