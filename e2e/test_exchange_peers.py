"""Token exchange against real token services, built from the Go module proxy by `e2e/peers/build`
and started here on loopback with TLS: each one trusts fedid's issuer through its discovery document
and JWKS, validates the token fedid sends, and issues credentials that the real consumer (PyJWT against
the peer's own JWKS, boto3) then uses.

- Dex: RFC 8693 with its OIDC connector trusting fedid's issuer; the access token it returns
  verifies against Dex's JWKS.
- MinIO: AssumeRoleWithWebIdentity validated against fedid's JWKS; boto3, given only the Secret's
  files (`AWS_CONFIG_FILE` whose `credential_process` reads `credential-process.json`), puts and
  gets an object in MinIO's S3.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path
from typing import Iterator

import jwt
import pytest
import requests

from conftest import E2E_DIR, Cluster, wait_for
from fedid_harness import (
    Operator,
    chart_operator,
    condition,
    free_port,
    get_json,
    secret_data,
    write_serving_certificate,
)

RUN = uuid.uuid4().hex[:6]
TEAM = f"peers-{RUN}"
ISSUER = f"peers-{RUN}"
DEX_CLIENT, DEX_SECRET = "fedid-ci", "dex-client-pass"
MINIO_CLIENT = "minio-ci"


def peers_bin() -> Path:
    """The peers' binaries: FEDID_PEERS_BIN when e2e/test built them, else built now."""
    if os.environ.get("FEDID_PEERS_BIN_READY"):
        return Path(os.environ["FEDID_PEERS_BIN_READY"])
    result = subprocess.run([str(E2E_DIR / "peers" / "build")], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"peers/build failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


class Peer:
    """A peer process with its log; stopped when the test module ends."""

    def __init__(self, name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.log = workdir / f"{name}.log"
        self.process = subprocess.Popen(args, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})}, cwd=workdir)

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        return True

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def bins() -> Path:
    return peers_bin()


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    with chart_operator(cluster, "fedid-peers", [TEAM]) as running:
        yield running
    cluster.kubectl("delete", "identityissuer", ISSUER, "--wait=false", check=False)


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"dex": free_port(), "minio": free_port(), "minio-console": free_port()}


@pytest.fixture(scope="module")
def issuer(cluster: Cluster, operator: Operator, ports: dict[str, int]) -> str:
    manifest = {
        "apiVersion": "fedid.dev/v1alpha1",
        "kind": "IdentityIssuer",
        "metadata": {"name": ISSUER},
        "spec": {
            "issuerURL": operator.issuer_url(ISSUER),
            "signing": {"prepublishPeriod": "0s"},
            "allowedNamespaces": {"names": [TEAM]},
            "exchange": {"allowedEndpoints": [
                f"https://127.0.0.1:{ports['dex']}/dex/",
                f"https://127.0.0.1:{ports['minio']}/",
            ]},
        },
    }
    wait_for("the issuer to be accepted", lambda: cluster.apply(json.dumps(manifest)).returncode == 0)
    cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{ISSUER}", "--timeout=60s")
    return operator.issuer_url(ISSUER)


@pytest.fixture(scope="module")
def dex(bins: Path, operator: Operator, issuer: str, ports: dict[str, int]) -> Iterator[dict]:
    workdir = Path(tempfile.mkdtemp(prefix="fedid-e2e-dex-"))
    ca, cert, key = write_serving_certificate(workdir)
    base = f"https://127.0.0.1:{ports['dex']}/dex"
    config = {
        "issuer": base,
        "storage": {"type": "memory"},
        "web": {"https": f"127.0.0.1:{ports['dex']}", "tlsCert": str(cert), "tlsKey": str(key)},
        "logger": {"level": "info"},
        "staticClients": [{"id": DEX_CLIENT, "secret": DEX_SECRET, "name": "fedid CI",
                           "redirectURIs": ["https://127.0.0.1/callback"]}],
        "connectors": [{
            "type": "oidc", "id": "fedid", "name": "fedid",
            "config": {
                "issuer": issuer,
                "rootCAs": [str(operator.ca)],
                "clientID": "dex", "clientSecret": "unused", "redirectURI": f"{base}/callback",
                "scopes": ["openid"],
                "userNameKey": "sub",
                "insecureSkipEmailVerified": True,
            },
        }],
    }
    (workdir / "config.yaml").write_text(json.dumps(config))
    peer = Peer("dex", [str(bins / "dex"), "serve", str(workdir / "config.yaml")], workdir)
    wait_for("Dex discovery", lambda: peer.alive() and requests.get(
        f"{base}/.well-known/openid-configuration", verify=str(ca), timeout=5).status_code == 200, timeout=60)
    try:
        yield {"base": base, "ca": ca.read_text(), "ca_path": ca}
    finally:
        peer.stop()


@pytest.fixture(scope="module")
def minio(bins: Path, operator: Operator, issuer: str, ports: dict[str, int]) -> Iterator[dict]:
    workdir = Path(tempfile.mkdtemp(prefix="fedid-e2e-minio-"))
    certs = workdir / "certs"
    (certs / "CAs").mkdir(parents=True)
    ca, cert, key = write_serving_certificate(workdir)
    shutil.copy(cert, certs / "public.crt")
    shutil.copy(key, certs / "private.key")
    shutil.copy(operator.ca, certs / "CAs" / "fedid.crt")
    endpoint = f"https://127.0.0.1:{ports['minio']}"
    env = {
        "MINIO_ROOT_USER": "fedid-admin",
        "MINIO_ROOT_PASSWORD": "fedid-admin-password",
        "MINIO_IDENTITY_OPENID_CONFIG_URL": f"{issuer}/.well-known/openid-configuration",
        "MINIO_IDENTITY_OPENID_CLIENT_ID": MINIO_CLIENT,
        "MINIO_IDENTITY_OPENID_ROLE_POLICY": "readwrite",
        "MINIO_BROWSER": "off",
        "MINIO_UPDATE": "off",
    }
    command = [str(bins / "minio"), "server", str(workdir / "data"), "--address", f"127.0.0.1:{ports['minio']}",
               "--console-address", f"127.0.0.1:{ports['minio-console']}", "--certs-dir", str(certs)]
    running: list[Peer] = []

    def start() -> None:
        peer = Peer(f"minio-{len(running)}", command, workdir, env)
        running.append(peer)
        wait_for("MinIO to be live", lambda: peer.alive() and requests.get(
            f"{endpoint}/minio/health/live", verify=str(ca), timeout=5).status_code == 200, timeout=90)

    def stop() -> None:
        running[-1].stop()

    start()
    digest = base64.urlsafe_b64encode(hashlib.sha1(MINIO_CLIENT.encode()).digest()).decode().rstrip("=")
    try:
        yield {"endpoint": endpoint, "ca": ca.read_text(), "ca_path": ca, "role": f"arn:minio:iam:::role/{digest}",
               "start": start, "stop": stop}
    finally:
        stop()


def identity(name: str, audiences: list[str], exchange: dict) -> str:
    return json.dumps({
        "apiVersion": "fedid.dev/v1alpha1",
        "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {"issuerRef": ISSUER, "audiences": audiences, "lifetime": "15m", "exchange": exchange},
    })


def test_dex_exchanges_fedids_token_for_its_own_access_token(cluster: Cluster, dex: dict) -> None:
    cluster.kubectl("create", "secret", "generic", "dex-client", "-n", TEAM, f"--from-literal=client-secret={DEX_SECRET}")
    cluster.kubectl("label", "secret", "dex-client", "-n", TEAM, "fedid.dev/client-credentials=true")
    cluster.apply(identity("dex", ["dex"], {
        "caBundle": dex["ca"],
        "oauth2": {
            "tokenURL": f"{dex['base']}/token",
            "subjectTokenType": "urn:ietf:params:oauth:token-type:id_token",
            "scopes": ["openid"],
            "extraParameters": {"connector_id": "fedid"},
            "clientAuth": {"clientID": DEX_CLIENT, "clientSecret": {"secretRef": {"name": "dex-client"}}},
        },
    }))
    cluster.kubectl("wait", "--for=condition=Ready", "fid/dex", "-n", TEAM, "--timeout=60s")
    files = secret_data(cluster, TEAM, "dex-token")["decoded"]
    assert files["token-type"].lower() == "bearer"
    # The access token is Dex's own, and verifies against Dex's JWKS.
    keys = requests.get(f"{dex['base']}/keys", verify=str(dex["ca_path"]), timeout=10).json()
    header = jwt.get_unverified_header(files["access-token"])
    key = {k.key_id: k for k in jwt.PyJWKSet.from_dict(keys).keys}[header["kid"]]
    claims = jwt.decode(files["access-token"], key.key, algorithms=[header["alg"]], issuer=dex["base"],
                        audience=DEX_CLIENT)
    assert claims["exp"] > claims["iat"]
    fid = get_json(cluster, "fid", "dex", "-n", TEAM)
    assert condition(fid, "CredentialsFresh")["reason"] == "Exchanged"
    # Dex's token lasts 24 h, fedid's 15 min: the Secret is good until the earlier of the two.
    assert files["expires-at"] == min(fid["status"]["credentialsExpireAt"], fid["status"]["expiresAt"])
    assert files["expires-at"] == fid["status"]["expiresAt"]

    # A wrong client secret is Dex's refusal, reported with its code, and nothing else changes.
    cluster.kubectl("create", "secret", "generic", "dex-wrong", "-n", TEAM, "--from-literal=client-secret=nope")
    cluster.kubectl("label", "secret", "dex-wrong", "-n", TEAM, "fedid.dev/client-credentials=true")
    cluster.apply(identity("dex-wrong", ["dex"], {
        "caBundle": dex["ca"],
        "oauth2": {
            "tokenURL": f"{dex['base']}/token",
            "subjectTokenType": "urn:ietf:params:oauth:token-type:id_token",
            "extraParameters": {"connector_id": "fedid"},
            "clientAuth": {"clientID": DEX_CLIENT, "clientSecret": {"secretRef": {"name": "dex-wrong"}}},
        },
    }))
    refused = wait_for("Dex's refusal", lambda: (
        f if (f := get_json(cluster, "fid", "dex-wrong", "-n", TEAM)).get("status", {}).get("lastExchange") else None))
    assert refused["status"]["lastExchange"]["outcome"] == "ExchangeRejected"
    assert refused["status"]["lastExchange"]["upstreamCode"] == "invalid_client"


BOTO_SCRIPT = textwrap.dedent("""
    import os, sys, boto3
    s3 = boto3.client("s3", endpoint_url=sys.argv[1], verify=sys.argv[2])
    s3.create_bucket(Bucket="fedid-e2e")
    s3.put_object(Bucket="fedid-e2e", Key="hello.txt", Body=b"from a fedid identity")
    print(s3.get_object(Bucket="fedid-e2e", Key="hello.txt")["Body"].read().decode())
""")


def test_minio_validates_the_token_and_boto3_uses_only_the_secrets_files(cluster: Cluster, minio: dict) -> None:
    mount = Path(tempfile.mkdtemp(prefix="fedid-e2e-mount-"))
    cluster.apply(identity("minio", [MINIO_CLIENT], {
        "caBundle": minio["ca"],
        "aws": {"roleARN": minio["role"], "stsEndpoint": f"{minio['endpoint']}/", "region": "us-east-1",
                "durationSeconds": 900, "mountPath": str(mount), "sessionName": "ci-{namespace}-{name}"},
    }))
    cluster.kubectl("wait", "--for=condition=Ready", "fid/minio", "-n", TEAM, "--timeout=60s")
    secret = secret_data(cluster, TEAM, "minio-token")
    files = secret["decoded"]
    assert {"credentials", "credential-process.json", "config", "expires-at", "token"} <= set(files)
    process = json.loads(files["credential-process.json"])
    # expires-at is the earlier of the credentials' and the token's expiry (the token is minted a
    # moment before STS starts the credentials' 900 s, so either may come first by a second).
    token_expiry = datetime.datetime.fromtimestamp(
        jwt.decode(files["token"], options={"verify_signature": False})["exp"], datetime.timezone.utc
    ).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert process["Version"] == 1 and files["expires-at"] == min(process["Expiration"], token_expiry)
    # What a pod sees: the Secret's keys as files in the mount directory.
    for key, value in files.items():
        (mount / key).write_text(value)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = str(mount / "config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(mount / "does-not-exist")
    result = subprocess.run([sys.executable, "-c", BOTO_SCRIPT, minio["endpoint"], str(minio["ca_path"])],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "from a fedid identity"

    # MinIO refuses a token for another audience: ExchangeRejected, with STS's error code.
    cluster.apply(identity("minio-wrong-aud", ["someone-else"], {
        "caBundle": minio["ca"], "aws": {"roleARN": minio["role"], "stsEndpoint": f"{minio['endpoint']}/"},
    }))
    refused = wait_for("MinIO's refusal", lambda: (
        f if (f := get_json(cluster, "fid", "minio-wrong-aud", "-n", TEAM)).get("status", {}).get("lastExchange")
        else None))
    assert refused["status"]["lastExchange"]["outcome"] == "ExchangeRejected"
    assert refused["status"]["lastExchange"]["upstreamCode"]


def test_a_stopped_minio_keeps_the_last_credentials_until_it_is_back(cluster: Cluster, minio: dict) -> None:
    # Credentials that MinIO caps at the 1-minute token's expiry: refreshed at about 40 s.
    cluster.apply(json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": "minio-outage", "namespace": TEAM},
        "spec": {"issuerRef": ISSUER, "audiences": [MINIO_CLIENT], "lifetime": "1m", "exchange": {
            "caBundle": minio["ca"], "aws": {"roleARN": minio["role"], "stsEndpoint": f"{minio['endpoint']}/"}}},
    }))
    cluster.kubectl("wait", "--for=condition=Ready", "fid/minio-outage", "-n", TEAM, "--timeout=60s")
    before = secret_data(cluster, TEAM, "minio-outage-token")["decoded"]
    minio["stop"]()
    try:
        failing = wait_for("the refresh to fail", lambda: (
            f if (c := condition(f := get_json(cluster, "fid", "minio-outage", "-n", TEAM), "CredentialsFresh"))
            and c["status"] == "False" else None), timeout=60)
        assert condition(failing, "CredentialsFresh")["reason"] == "ExchangeUnavailable"
        assert "connection failed" in condition(failing, "CredentialsFresh")["message"]
        # The credentials in the Secret are the last good ones, and the identity is still Ready.
        assert condition(failing)["status"] == "True"
        assert secret_data(cluster, TEAM, "minio-outage-token")["decoded"]["credentials"] == before["credentials"]
    finally:
        minio["start"]()
    # Back within one backoff interval: fresh credentials, CredentialsFresh=True again.
    wait_for("fresh credentials after the outage", lambda: (
        c := condition(get_json(cluster, "fid", "minio-outage", "-n", TEAM), "CredentialsFresh"))
        and c["status"] == "True", timeout=90)
    after = secret_data(cluster, TEAM, "minio-outage-token")["decoded"]
    assert after["credentials"] != before["credentials"]
