"""Per-pod credentials: a FederatedIdentity with `spec.pods` and `spec.exchange.aws`, against a real MinIO.

Every opted-in pod gets a Secret of its own (named in its `fedid.dev/secret-name` annotation and
owned by it) that holds its own token (with its `pod`, `pod_uid` and `service_account` claims) and
the credentials MinIO's STS gave for that token (`credentials`, `credential-process.json`,
`config`). The webhook points `AWS_CONFIG_FILE` at the Secret's mount path. This module starts its
own `fedid run` with the pod server, registers its webhook with the real apiserver (as
test_pods.py does), and starts MinIO (built by `e2e/peers/build`, as test_exchange_peers.py does)
trusting fedid's issuer. fedid reaches MinIO's STS through a transparent recording proxy
(`peers/recorder.py`) so the test can count the AssumeRoleWithWebIdentity calls; boto3 talks to
MinIO's S3 directly, with only the files of one pod's Secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import jwt
import pytest
import requests

from conftest import REPO_ROOT, Cluster, wait_for
from fedid_harness import (
    Operator,
    fedid_binary,
    free_port,
    get_json,
    jwts_in,
    secret_data,
    verify_token,
    wait_for_reason,
    write_serving_certificate,
)
from peers.recorder import Recorder, forward
from test_exchange_peers import Peer, peers_bin
from test_pods import (
    absent,
    create_pod,
    env_of,
    generated_for,
    mounts_of,
    pod_manifest,
    secret_name_of,
    set_phase,
    volumes_of,
    wait_for_pod_secret,
)

# Names unique to this run (and distinct from test_pods.py's), so that a reused cluster starts clean
# and this module's webhook never sees other modules' pods, nor theirs this module's.
RUN = uuid.uuid4().hex[:6]
OPERATOR_NS = f"fedid-podsx-{RUN}"
ISSUER = f"podsx-{RUN}"
WEBHOOK = f"fedid-podsx-{RUN}"
RUN_LABEL = "fedid-e2e/podsx-run"
POD_TLS_SECRET = "fedid-pod-server-tls"
IDENTITY = "uploader"
MINIO_CLIENT = "minio-podsx"
# exchange.aws.mountPath's default, where the webhook mounts the pod's Secret.
MOUNT = "/var/run/secrets/fedid"
EXCHANGE_KEYS = {"credentials", "credential-process.json", "config"}


def webhook_manifest(port: int) -> str:
    return json.dumps({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK},
        "webhooks": [{
            "name": "pods.fedid.dev",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate"},
            "objectSelector": {"matchExpressions": [{"key": "fedid.dev/identity", "operator": "Exists"}]},
            "namespaceSelector": {"matchLabels": {RUN_LABEL: RUN}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 10,
        }],
    })


@pytest.fixture(scope="module")
def env(cluster: Cluster) -> Iterator[dict]:
    """fedid with its pod server and webhook, its issuer, MinIO trusting it, and the STS recorder."""
    bins = peers_bin()
    cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    for crd in ("identityissuers.fedid.dev", "federatedidentities.fedid.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    cluster.kubectl("create", "namespace", OPERATOR_NS)
    pod_port, minio_port, console_port = free_port(), free_port(), free_port()
    cluster.apply(webhook_manifest(pod_port))

    workdir = Path(tempfile.mkdtemp(prefix="fedid-e2e-podsx-"))
    operator = Operator(
        cluster=cluster, binary=fedid_binary(), workdir=workdir, namespace=OPERATOR_NS, name="podsx",
        extra_args=["--pod-server-addr", f"127.0.0.1:{pod_port}", "--pod-tls-hosts", "127.0.0.1",
                    "--webhook-configuration", WEBHOOK],
    )
    # MinIO's serving certificate also serves the recorder in front of its STS (both 127.0.0.1).
    minio_dir = workdir / "minio"
    certs = minio_dir / "certs"
    (certs / "CAs").mkdir(parents=True)
    ca, cert, key = write_serving_certificate(minio_dir)
    shutil.copy(cert, certs / "public.crt")
    shutil.copy(key, certs / "private.key")
    shutil.copy(operator.ca, certs / "CAs" / "fedid.crt")
    endpoint = f"https://127.0.0.1:{minio_port}"
    recorder = Recorder(cert, key, handler=forward, upstream=endpoint, upstream_ca=ca)
    minio: Peer | None = None
    try:
        operator.start()
        tls = wait_for("the pod server's generated certificate",
                       lambda: secret_data(cluster, OPERATOR_NS, POD_TLS_SECRET), timeout=60)

        def ca_bundle_set() -> bool:
            configuration = get_json(cluster, "mutatingwebhookconfiguration", WEBHOOK)
            return all(
                (bundle := webhook["clientConfig"].get("caBundle"))
                and base64.b64decode(bundle).decode() == tls["decoded"]["ca.crt"]
                for webhook in configuration["webhooks"]
            )

        wait_for("fedid to set the webhook's caBundle", ca_bundle_set, timeout=60)
        issuer_url = operator.issuer_url(ISSUER)
        cluster.apply(json.dumps({
            "apiVersion": "fedid.dev/v1alpha1",
            "kind": "IdentityIssuer",
            "metadata": {"name": ISSUER},
            "spec": {
                "issuerURL": issuer_url,
                "signing": {"prepublishPeriod": "0s"},
                "allowedNamespaces": {"selector": {"matchLabels": {RUN_LABEL: RUN}}},
                "exchange": {"allowedEndpoints": [f"{recorder.url}/"]},
            },
        }))
        cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{ISSUER}", "--timeout=90s")

        # MinIO reads fedid's discovery document when it starts: after the issuer is Ready.
        minio = Peer("minio", [
            str(bins / "minio"), "server", str(minio_dir / "data"), "--address", f"127.0.0.1:{minio_port}",
            "--console-address", f"127.0.0.1:{console_port}", "--certs-dir", str(certs),
        ], minio_dir, {
            "MINIO_ROOT_USER": "fedid-admin",
            "MINIO_ROOT_PASSWORD": "fedid-admin-password",
            "MINIO_IDENTITY_OPENID_CONFIG_URL": f"{issuer_url}/.well-known/openid-configuration",
            "MINIO_IDENTITY_OPENID_CLIENT_ID": MINIO_CLIENT,
            "MINIO_IDENTITY_OPENID_ROLE_POLICY": "readwrite",
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        })
        wait_for("MinIO to be live", lambda: minio.alive() and requests.get(
            f"{endpoint}/minio/health/live", verify=str(ca), timeout=5).status_code == 200, timeout=120)
        recorder.__enter__()
        digest = base64.urlsafe_b64encode(hashlib.sha1(MINIO_CLIENT.encode()).digest()).decode().rstrip("=")
        yield {"operator": operator, "issuer_url": issuer_url, "endpoint": endpoint, "ca": ca.read_text(),
               "ca_path": ca, "role": f"arn:minio:iam:::role/{digest}", "recorder": recorder}
    finally:
        operator.stop()
        recorder.__exit__()
        if minio is not None:
            minio.stop()
        # Left behind, the configuration would refuse this run's labelled pods for good.
        cluster.kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK, "--ignore-not-found", check=False)
        namespaces = get_json(cluster, "namespaces", "-l", f"{RUN_LABEL}={RUN}")["items"]
        for name in [OPERATOR_NS, *(namespace["metadata"]["name"] for namespace in namespaces)]:
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
        cluster.kubectl("delete", "identityissuer", ISSUER, "--wait=false", "--ignore-not-found", check=False)
        logs = operator.logs()
        # No token, key or credential may ever reach the logs.
        assert "PRIVATE KEY" not in logs
        assert not jwts_in(logs), f"a JWT appeared in the operator's logs: {jwts_in(logs)}"


@pytest.fixture(scope="module")
def two_pods(cluster: Cluster, env: dict) -> dict:
    """One identity (a pod template exchanging with MinIO's STS), two of its pods and their Secrets."""
    namespace = f"podsx-{RUN}"
    cluster.apply(json.dumps({"apiVersion": "v1", "kind": "Namespace",
                              "metadata": {"name": namespace, "labels": {RUN_LABEL: RUN}}}))
    wait_for(f"the default ServiceAccount of {namespace}",
             lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode == 0)
    cluster.apply(json.dumps({
        "apiVersion": "fedid.dev/v1alpha1",
        "kind": "FederatedIdentity",
        "metadata": {"name": IDENTITY, "namespace": namespace},
        "spec": {
            "issuerRef": ISSUER,
            "audiences": [MINIO_CLIENT],
            "lifetime": "15m",
            "pods": {},
            "exchange": {
                "caBundle": env["ca"],
                "aws": {"roleARN": env["role"], "stsEndpoint": f"{env['recorder'].url}/", "region": "us-east-1",
                        "durationSeconds": 900},
            },
        },
    }))
    wait_for_reason(cluster, namespace, IDENTITY, "PodTemplate", timeout=90)
    pods = [create_pod(cluster, namespace, pod_manifest(name=name, identity=IDENTITY)) for name in ("job-a", "job-b")]
    secrets = [wait_for_pod_secret(cluster, pod, timeout=120) for pod in pods]
    return {"namespace": namespace, "pods": pods, "secrets": secrets}


BOTO_SCRIPT = textwrap.dedent("""
    import sys, boto3
    endpoint, ca, bucket, body = sys.argv[1:5]
    session = boto3.session.Session()
    print(session.get_credentials().get_frozen_credentials().access_key)
    s3 = session.client("s3", endpoint_url=endpoint, verify=ca)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="hello.txt", Body=body.encode())
    print(s3.get_object(Bucket=bucket, Key="hello.txt")["Body"].read().decode())
""")


def access_key(files: dict[str, str]) -> str:
    return json.loads(files["credential-process.json"])["AccessKeyId"]


def test_each_pod_gets_its_own_secret_token_and_minio_credentials(
    cluster: Cluster, env: dict, two_pods: dict
) -> None:
    operator, namespace = env["operator"], two_pods["namespace"]
    claims = []
    for pod, secret in zip(two_pods["pods"], two_pods["secrets"]):
        metadata, name = secret["metadata"], pod["metadata"]["name"]
        assert generated_for(IDENTITY, metadata["name"]), metadata["name"]
        assert metadata["name"] == secret_name_of(pod)
        [owner] = metadata["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner.get("controller")) == (
            "Pod", name, pod["metadata"]["uid"], True)

        # The webhook mounted that Secret where exchange.aws.mountPath says, and pointed the SDK at it.
        assert volumes_of(pod)["fedid-token"]["secret"]["secretName"] == metadata["name"]
        [container] = pod["spec"]["containers"]
        assert mounts_of(container)["fedid-token"]["mountPath"] == MOUNT
        assert env_of(container)["AWS_CONFIG_FILE"] == f"{MOUNT}/config"
        assert env_of(container)["FEDID_TOKEN_FILE"] == f"{MOUNT}/token"

        files = secret["decoded"]
        assert {"token", "expires-at", *EXCHANGE_KEYS} <= set(files), sorted(files)
        token_claims = verify_token(operator, files["token"], env["issuer_url"], MINIO_CLIENT)
        assert (token_claims["namespace"], token_claims["identity"]) == (namespace, IDENTITY)
        assert (token_claims["pod"], token_claims["pod_uid"], token_claims["service_account"]) == (
            name, pod["metadata"]["uid"], "default")
        claims.append(token_claims)
        process = json.loads(files["credential-process.json"])
        # expires-at is the earlier of the token's and the credentials' expiry; MinIO counts the
        # credentials' lifetime from its own clock, so either may come first by a second.
        token_expiry = datetime.fromtimestamp(token_claims["exp"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert process["Version"] == 1
        assert files["expires-at"] == min(token_expiry, process["Expiration"]), (
            files["expires-at"], token_expiry, process["Expiration"])
        assert f"aws_access_key_id = {process['AccessKeyId']}" in files["credentials"]
        assert f"credential_process = cat {MOUNT}/credential-process.json" in files["config"], files["config"]

    first, second = (secret["decoded"] for secret in two_pods["secrets"])
    assert two_pods["secrets"][0]["metadata"]["name"] != two_pods["secrets"][1]["metadata"]["name"]
    assert claims[0]["pod_uid"] != claims[1]["pod_uid"] and claims[0]["jti"] != claims[1]["jti"]
    assert access_key(first) != access_key(second), "two pods were given the same MinIO credentials"
    # The identity is a template only: no Secret of its own.
    assert absent(cluster, "secret", f"{IDENTITY}-token", namespace)


def test_boto3_with_only_a_pods_secret_files_uses_minio_as_that_pod(env: dict, two_pods: dict) -> None:
    for pod, secret in zip(two_pods["pods"], two_pods["secrets"]):
        name, files = pod["metadata"]["name"], secret["decoded"]
        # What the pod sees at MOUNT, here in a directory of its own; `config` names MOUNT.
        mount = Path(tempfile.mkdtemp(prefix=f"fedid-e2e-podsx-{name}-"))
        for key, value in files.items():
            (mount / key).write_text(value)
        (mount / "config").write_text(files["config"].replace(f"{MOUNT}/", f"{mount}/"))
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        child_env["AWS_CONFIG_FILE"] = str(mount / "config")
        child_env["AWS_SHARED_CREDENTIALS_FILE"] = str(mount / "does-not-exist")
        bucket, body = f"podsx-{RUN}-{name}", f"from pod {name} ({pod['metadata']['uid']})"
        result = subprocess.run([sys.executable, "-c", BOTO_SCRIPT, env["endpoint"], str(env["ca_path"]), bucket, body],
                                capture_output=True, text=True, env=child_env, timeout=180)
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
        used, read = result.stdout.strip().splitlines()
        assert used == access_key(files), f"{name}: boto3 used other credentials than the pod's"
        assert read == body


def test_minio_sees_one_assume_role_with_web_identity_per_pod(env: dict, two_pods: dict) -> None:
    calls = [seen.form for seen in env["recorder"].requests if seen.form.get("Action") == "AssumeRoleWithWebIdentity"]
    by_pod = Counter(jwt.decode(call["WebIdentityToken"], options={"verify_signature": False}).get("pod_uid")
                     for call in calls)
    uids = [pod["metadata"]["uid"] for pod in two_pods["pods"]]
    assert by_pod == Counter(uids), f"AssumeRoleWithWebIdentity calls by pod_uid: {dict(by_pod)}, pods: {uids}"
    # Each call carried exactly the token that is in that pod's Secret.
    sent = {jwt.decode(call["WebIdentityToken"], options={"verify_signature": False})["pod_uid"]:
            call["WebIdentityToken"] for call in calls}
    for pod, secret in zip(two_pods["pods"], two_pods["secrets"]):
        assert sent[pod["metadata"]["uid"]] == secret["decoded"]["token"], pod["metadata"]["name"]
        assert all(call["RoleArn"] == env["role"] for call in calls)


def test_a_finished_pods_secret_is_deleted_and_the_other_pods_stays(cluster: Cluster, two_pods: dict) -> None:
    namespace = two_pods["namespace"]
    done, (done_secret, live_secret) = two_pods["pods"][0], two_pods["secrets"]
    set_phase(cluster, namespace, done["metadata"]["name"], "Succeeded")
    wait_for("the Secret of the finished pod to be deleted",
             lambda: absent(cluster, "secret", done_secret["metadata"]["name"], namespace), timeout=90)
    kept = secret_data(cluster, namespace, live_secret["metadata"]["name"])
    assert kept["metadata"]["uid"] == live_secret["metadata"]["uid"]
    assert kept["decoded"]["credentials"] == live_secret["decoded"]["credentials"]
    assert kept["decoded"]["token"] == live_secret["decoded"]["token"]
