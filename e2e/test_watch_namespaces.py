"""Namespaced mode: the chart's `watchNamespaces` and `fedid run --watch-namespaces`.

The chart is installed as release `fedid-scoped` with two listed namespaces and the pod server
on. Its ServiceAccount's rights are compared with the chart README's table the way a sceptic
would (`kubectl auth can-i --list` in each kind of namespace, and real lists and deletes as the
ServiceAccount), and fedid runs with exactly those rights: identities and pods in the listed
namespaces are served, one in a namespace that is not listed is never seen, a namespace that
stops matching the issuer's selector loses its tokens, and nothing fedid asked for was forbidden.
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import Cluster, wait_for
from fedid_harness import (
    LISTED_NAMESPACES_RIGHTS,
    OPERATOR_NAMESPACE,
    Operator,
    can_i_list,
    chart_operator,
    condition,
    documented_rights,
    events_for,
    free_port,
    get_json,
    identity_manifest,
    secret_data,
    verify_token,
)

RUN = uuid.uuid4().hex[:6]
LISTED = [f"scope-b-{RUN}", f"scope-a-{RUN}"]  # not sorted: the chart keeps the order given
UNLISTED = f"scope-c-{RUN}"
RELEASE = "fedid-scoped"
SUBJECT = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}"
ISSUER = f"scoped-{RUN}"
# The issuer allows namespaces by this label, which all three carry: only the listing differs.
LABEL = "fedid-e2e-scope"
AUDIENCE = "sts.example.com"
POD_PORT = free_port()


def webhook_manifest(port: int) -> str:
    """The release's webhook configuration, calling the out-of-cluster pod server on loopback, for
    labelled pods in a listed namespace and in the unlisted one (so that the pod server itself
    must refuse the latter; the chart's namespaceSelector would never send it)."""
    return json.dumps({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": RELEASE},
        "webhooks": [{
            "name": "pods.fedid.dev",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate"},
            "objectSelector": {"matchExpressions": [{"key": "fedid.dev/identity", "operator": "Exists"}]},
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [LISTED[1], UNLISTED]}]},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                       "scope": "Namespaced"}],
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    })


@pytest.fixture(scope="module")
def scoped(cluster: Cluster) -> Iterator[Operator]:
    """fedid run --watch-namespaces (with its pod server) as the ServiceAccount of the release,
    and an issuer allowing the three namespaces by label."""
    port = POD_PORT

    def prepare() -> None:
        for namespace in (*LISTED, UNLISTED):
            cluster.kubectl("label", "namespace", namespace, "--overwrite", f"{LABEL}={RUN}")
        # The chart's configuration calls an in-cluster Service no pod backs here: replaced by
        # one of the same name (the only one the ServiceAccount may patch) calling loopback.
        cluster.kubectl("delete", "mutatingwebhookconfiguration", RELEASE, "--ignore-not-found")
        cluster.apply(webhook_manifest(port))

    args = [
        "--watch-namespaces", ",".join(LISTED),
        "--pod-server-addr", f"127.0.0.1:{port}", "--pod-tls-hosts", "127.0.0.1",
        "--pod-tls-secret-name", f"{RELEASE}-pod-server-tls", "--webhook-configuration", RELEASE,
        "--pod-token-url", f"https://127.0.0.1:{port}/v1/token",
    ]
    values = (f"watchNamespaces={{{','.join(LISTED)}}}",)
    try:
        with chart_operator(cluster, "scoped", [*LISTED, UNLISTED], extra_args=args, values=values,
                            release=RELEASE, pods=True, before_start=prepare) as operator:
            issuer = {
                "apiVersion": "fedid.dev/v1alpha1", "kind": "IdentityIssuer", "metadata": {"name": ISSUER},
                "spec": {"issuerURL": operator.issuer_url(ISSUER), "signing": {"prepublishPeriod": "0s"},
                         "allowedNamespaces": {"selector": {"matchLabels": {LABEL: RUN}}}},
            }
            wait_for("the issuer to be accepted", lambda: cluster.apply(json.dumps(issuer)).returncode == 0)
            cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{ISSUER}", "--timeout=60s")

            def ca_bundle_set() -> bool:
                webhook = get_json(cluster, "mutatingwebhookconfiguration", RELEASE)["webhooks"][0]
                return bool(webhook["clientConfig"].get("caBundle"))

            wait_for("fedid to set the webhook's caBundle", ca_bundle_set, timeout=30)
            yield operator
            forbidden = [line for line in operator.logs().splitlines() if "forbidden" in line.lower()]
            assert not forbidden, "fedid asked for something its namespaced rights do not allow:\n" + "\n".join(
                forbidden[:5])
    finally:
        cluster.kubectl("delete", "mutatingwebhookconfiguration", RELEASE, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "identityissuer", ISSUER, "--wait=false", "--ignore-not-found", check=False)
        subprocess.run([str(cluster.bin / "helm"), "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE],
                       capture_output=True, env=cluster.env(), timeout=120, check=False)
        cluster.kubectl("delete", "namespace", *LISTED, UNLISTED, "--wait=false", check=False)


def as_fedid(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(*args, f"--as={SUBJECT}", check=False)


def forbidden(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode != 0 and "forbidden" in result.stderr.lower()


def test_rights_are_exactly_the_documented_table(cluster: Cluster, scoped: Operator) -> None:
    table = documented_rights(LISTED_NAMESPACES_RIGHTS, RELEASE, LISTED)
    assert set(table) == {"cluster", "listed namespace", "release namespace", "default namespace"}
    cluster_wide = table["cluster"]
    assert not [right for right in cluster_wide if right[0] in ("secrets", "configmaps", "pods")]
    for namespace in LISTED:
        assert can_i_list(cluster, SUBJECT, namespace) == cluster_wide | table["listed namespace"], namespace
    assert can_i_list(cluster, SUBJECT, OPERATOR_NAMESPACE) == cluster_wide | table["release namespace"]
    assert can_i_list(cluster, SUBJECT, "default") == cluster_wide | table["default namespace"]
    assert can_i_list(cluster, SUBJECT, UNLISTED) == cluster_wide, "an unlisted namespace grants nothing more"


def test_no_secret_outside_the_listed_namespaces_can_be_read_or_changed(cluster: Cluster, scoped: Operator) -> None:
    """The README's statement, checked with real requests as the ServiceAccount."""
    value = f"known-{uuid.uuid4().hex}"
    for namespace in (LISTED[0], UNLISTED):
        cluster.kubectl("create", "secret", "generic", "not-fedids", "-n", namespace, f"--from-literal=password={value}")
    # Nowhere at once, not in the unlisted namespace, not even one by one.
    assert forbidden(as_fedid(cluster, "get", "secrets", "-A"))
    assert forbidden(as_fedid(cluster, "get", "secrets", "-n", UNLISTED))
    assert forbidden(as_fedid(cluster, "get", "secret", "not-fedids", "-n", UNLISTED))
    assert forbidden(as_fedid(cluster, "delete", "secret", "not-fedids", "-n", UNLISTED, "--dry-run=server"))
    assert forbidden(as_fedid(cluster, "label", "secret", "not-fedids", "-n", UNLISTED, "x=y"))
    assert forbidden(as_fedid(cluster, "create", "secret", "generic", "planted", "-n", UNLISTED, "--from-literal=a=b"))
    assert forbidden(as_fedid(cluster, "get", "configmaps", "-n", UNLISTED))
    assert forbidden(as_fedid(cluster, "get", "pods", "-n", UNLISTED))
    assert forbidden(as_fedid(cluster, "get", "federatedidentities", "-A"))
    # In a listed namespace the list does return a foreign Secret's data, as the README warns.
    listed = as_fedid(cluster, "get", "secrets", "-n", LISTED[0], "-o", "json")
    assert listed.returncode == 0, listed.stderr
    [found] = [s for s in json.loads(listed.stdout)["items"] if s["metadata"]["name"] == "not-fedids"]
    assert base64.b64decode(found["data"]["password"]).decode() == value
    # Namespaces: only the listed ones, by name (a metadata.name field selector for list and watch).
    assert forbidden(as_fedid(cluster, "get", "namespaces"))
    named = as_fedid(cluster, "get", "namespaces", "--field-selector", f"metadata.name={LISTED[0]}", "-o", "name")
    assert named.returncode == 0 and named.stdout.strip() == f"namespace/{LISTED[0]}", named.stdout + named.stderr
    assert forbidden(as_fedid(cluster, "get", "namespaces", "--field-selector", f"metadata.name={UNLISTED}"))
    assert forbidden(as_fedid(cluster, "get", "namespace", UNLISTED))
    # Unchanged (checked as the admin).
    assert secret_data(cluster, UNLISTED, "not-fedids")["decoded"] == {"password": value}


def test_listed_namespaces_are_served_and_an_unlisted_one_is_never_seen(cluster: Cluster, scoped: Operator) -> None:
    # The unlisted namespace's identity first: by the time the listed ones are Ready, fedid would
    # long have written its status and Secret, had it seen it.
    cluster.apply(json.dumps(identity_manifest(UNLISTED, "unseen", ISSUER, AUDIENCE)))
    for namespace in LISTED:
        cluster.apply(json.dumps(identity_manifest(namespace, "deploy", ISSUER, AUDIENCE)))
    for namespace in LISTED:
        cluster.kubectl("wait", "--for=condition=Ready", "fid/deploy", "-n", namespace, "--timeout=60s")
        token = secret_data(cluster, namespace, "deploy-token")["decoded"]["token"]
        claims = verify_token(scoped, token, scoped.issuer_url(ISSUER), AUDIENCE)
        assert claims["namespace"] == namespace
    unseen = get_json(cluster, "fid", "unseen", "-n", UNLISTED)
    assert "status" not in unseen, unseen.get("status")
    assert cluster.kubectl("get", "secret", "unseen-token", "-n", UNLISTED, check=False).returncode != 0
    assert not events_for(cluster, UNLISTED, "unseen")
    metrics = scoped.get("/metrics").text
    assert f'namespace="{LISTED[0]}"' in metrics and f'namespace="{UNLISTED}"' not in metrics
    # The issuer's Events (cluster-scoped) are in default, through the chart's Role there.
    reasons = {event["reason"] for event in events_for(cluster, "default", ISSUER)}
    assert "KeyCreated" in reasons, reasons


def test_a_listed_namespace_that_stops_matching_the_selector_loses_its_token(cluster: Cluster, scoped: Operator) -> None:
    """The namespaces are watched by name (field selectors authorized by resourceNames): a label
    change still reaches fedid within seconds."""
    namespace = LISTED[1]
    cluster.apply(json.dumps(identity_manifest(namespace, "revoked", ISSUER, AUDIENCE)))
    cluster.kubectl("wait", "--for=condition=Ready", "fid/revoked", "-n", namespace, "--timeout=60s")
    cluster.kubectl("label", "namespace", namespace, "--overwrite", f"{LABEL}=no")
    try:
        def revoked() -> bool:
            identity = get_json(cluster, "fid", "revoked", "-n", namespace)
            ready = condition(identity) or {}
            gone = cluster.kubectl("get", "secret", "revoked-token", "-n", namespace, check=False).returncode != 0
            return ready.get("reason") == "NamespaceNotAllowed" and gone

        wait_for("the identity to lose its token", revoked, timeout=30)
    finally:
        cluster.kubectl("label", "namespace", namespace, "--overwrite", f"{LABEL}={RUN}")
    cluster.kubectl("wait", "--for=condition=Ready", "fid/revoked", "-n", namespace, "--timeout=60s")
    assert secret_data(cluster, namespace, "revoked-token")["decoded"]["token"]


def test_pods_are_served_in_a_listed_namespace_and_refused_elsewhere(
    cluster: Cluster, scoped: Operator, tmp_path: Path
) -> None:
    namespace = LISTED[1]
    for where in (namespace, UNLISTED):
        cluster.apply(json.dumps(identity_manifest(where, "job", ISSUER, AUDIENCE, pods={})))
    wait_for("the template identity to be cached",
             lambda: (condition(get_json(cluster, "fid", "job", "-n", namespace)) or {}).get("reason") == "PodTemplate")

    def pod(name: str) -> str:
        return json.dumps({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": name, "labels": {"fedid.dev/identity": "job"}},
                           "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]}})

    created = cluster.kubectl("create", "-n", namespace, "-f", "-", "-o", "json", input=pod("job-1"), check=False)
    assert created.returncode == 0, created.stderr
    stored = json.loads(created.stdout)
    secret_name = stored["metadata"]["annotations"]["fedid.dev/secret-name"]
    secret = wait_for("the pod's Secret", lambda: secret_data(cluster, namespace, secret_name), timeout=60)
    claims = verify_token(scoped, secret["decoded"]["token"], scoped.issuer_url(ISSUER), AUDIENCE)
    assert claims["pod_uid"] == stored["metadata"]["uid"]
    refused = cluster.kubectl("create", "-n", UNLISTED, "-f", "-", input=pod("job-2"), check=False)
    assert refused.returncode != 0
    assert f"namespace {UNLISTED} is not served" in refused.stderr, refused.stderr
    # Nor may a pod there pull a token: the token endpoint refuses it before looking it up.
    plain = json.loads(cluster.kubectl("create", "-n", UNLISTED, "-f", "-", "-o", "json", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]}})).stdout)
    bearer = cluster.kubectl(
        "create", "token", plain["spec"]["serviceAccountName"], "-n", UNLISTED, "--audience", "fedid.dev/token-request",
        "--duration", "10m", "--bound-object-kind", "Pod", "--bound-object-name", "plain",
        "--bound-object-uid", plain["metadata"]["uid"]).stdout.strip()
    ca = tmp_path / "pod-server-ca.crt"
    ca.write_text(secret_data(cluster, OPERATOR_NAMESPACE, f"{RELEASE}-pod-server-tls")["decoded"]["ca.crt"])
    session = requests.Session()
    session.trust_env = False
    answer = session.post(f"https://127.0.0.1:{POD_PORT}/v1/token", json={"audience": AUDIENCE},
                          headers={"Authorization": f"Bearer {bearer}"}, verify=str(ca), timeout=15)
    assert answer.status_code == 403, answer.text
    assert f"namespace {UNLISTED} is not served" in answer.json()["error_description"], answer.text
