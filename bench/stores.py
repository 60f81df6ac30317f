"""Real object stores on loopback for the tests and bench/store.py: moto's server (the S3 API over HTTP, requests
signed and checked against an IAM user's keys) and Azurite (Azure's Blob Storage emulator, from npm). Each runs
as a subprocess on a free port with its data in a temporary folder, stopped at the end.

No GCS emulator that obstore can talk to installs here (PyPI's gcp-storage-emulator stubs GCS's JSON API;
obstore speaks the XML API): gs:// is covered by the code it shares with s3:// and az:// and by the tests that
open a gs:// store without a server."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx

from bench.common import free_port

REGION = "us-east-1"
AZURITE_ACCOUNT = "devstoreaccount1"  # Azurite's well-known account and key (its documentation's)
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class MotoS3:
    """`moto_server` on a free loopback port. After `start` every request must be signed with `key_id` and
    `secret` (moto's IAM authentication, switched on once the user, its keys and the buckets exist)."""

    def __init__(self, *buckets: str):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(self.port, 30)
        setup = {"endpoint_url": self.endpoint, "region_name": REGION, "aws_access_key_id": "setup",
                 "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="rnnserve")
        iam.put_user_policy(UserName="rnnserve", PolicyName="buckets", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="rnnserve")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        s3 = boto3.client("s3", **setup)
        for bucket in buckets:
            s3.create_bucket(Bucket=bucket)
        httpx.post(f"{self.endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()  # from now on: signed

    def env(self, secret: str | None = None) -> dict[str, str]:
        """The standard AWS variables a server or writer reads to reach this store (another secret: refused)."""
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": secret or self.secret,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


class Azurite:
    """Azurite's Blob service on a free loopback port, its data in `folder`, with these containers."""

    def __init__(self, folder: Path, *containers: str):
        from azure.storage.blob import BlobServiceClient

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"
        command = shutil.which("azurite-blob")
        assert command, "azurite-blob is not installed (npm install -g azurite)"
        self.proc = subprocess.Popen([command, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location",
                                      str(folder), "--silent", "--skipApiVersionCheck"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(self.port, 60)
        service = BlobServiceClient.from_connection_string(
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.endpoint};")
        for container in containers:
            service.create_container(container)

    def env(self, key: str | None = None) -> dict[str, str]:
        """The standard Azure variables a server or writer reads to reach this store."""
        return {"AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": key or AZURITE_KEY,
                "AZURE_STORAGE_ENDPOINT": self.endpoint}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def _wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")
        time.sleep(0.05)
