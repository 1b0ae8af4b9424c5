"""Tampering and revocation on the real control plane, fedid running as the chart's ServiceAccount:
a Secret edited, emptied or given extra keys by someone else is written again within one pass,
with a Warning Event, while a user's labels are left alone; an identity that loses its right to a
token (the issuer's names drop its namespace, the namespace stops matching the selector, the
issuer is deleted) has its token Secret deleted within seconds, and a restored right issues a
new token.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Iterator

import pytest

from conftest import Cluster, wait_for
from fedid_harness import (
    Operator,
    chart_operator,
    condition,
    events_for,
    get_json,
    secret_data,
    verify_token,
)

RUN = uuid.uuid4().hex[:6]
TEAM = f"tamper-{RUN}"
OTHER = f"tamper-other-{RUN}"
BY_NAME = f"tamper-names-{RUN}"
BY_LABEL = f"tamper-labels-{RUN}"
LABEL = f"fedid.dev/tamper-{RUN}"


def issuer(operator: Operator, name: str, allowed: dict) -> str:
    return json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "IdentityIssuer", "metadata": {"name": name},
        "spec": {"issuerURL": operator.issuer_url(name), "signing": {"prepublishPeriod": "0s"},
                 "allowedNamespaces": allowed},
    })


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    with chart_operator(cluster, "fedid-tamper", [TEAM, OTHER]) as running:
        cluster.kubectl("label", "namespace", OTHER, f"{LABEL}=yes", "--overwrite")
        cluster.apply(issuer(running, BY_NAME, {"names": [TEAM]}))
        cluster.apply(issuer(running, BY_LABEL, {"selector": {"matchLabels": {LABEL: "yes"}}}))
        for name in (BY_NAME, BY_LABEL):
            cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{name}", "--timeout=60s")
        yield running
    for name in (BY_NAME, BY_LABEL):
        cluster.kubectl("delete", "identityissuer", name, "--wait=false", check=False)


def identity(cluster: Cluster, namespace: str, name: str, issuer_name: str) -> None:
    cluster.apply(json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"issuerRef": issuer_name, "audiences": ["sts.example.com"]},
    }))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", namespace, "--timeout=60s")


def token_of(cluster: Cluster, namespace: str, name: str) -> str:
    return secret_data(cluster, namespace, f"{name}-token")["decoded"]["token"]


def warning_events(cluster: Cluster, namespace: str, name: str, reason: str) -> list[dict]:
    return [e for e in events_for(cluster, namespace, name) if e.get("reason") == reason]


def patch_secret(cluster: Cluster, namespace: str, name: str, patch: dict) -> None:
    cluster.kubectl("patch", "secret", f"{name}-token", "-n", namespace, "--type=merge", "-p", json.dumps(patch))


def restored(cluster: Cluster, namespace: str, name: str, tampered_token: str | None) -> dict:
    """Waits until the Secret holds a valid-looking token again that is not the tampered value."""
    def check() -> dict | None:
        decoded = secret_data(cluster, namespace, f"{name}-token")["decoded"]
        token = decoded.get("token")
        if token and token != tampered_token and token.count(".") == 2 and "extra" not in decoded:
            return decoded
        return None
    return wait_for(f"Secret {name}-token restored", check, timeout=30)


def test_an_edited_secret_is_written_again_with_an_event(cluster: Cluster, operator: Operator) -> None:
    name = "edited"
    identity(cluster, TEAM, name, BY_NAME)
    original = token_of(cluster, TEAM, name)
    forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."
    patch_secret(cluster, TEAM, name, {"data": {"token": base64.b64encode(forged.encode()).decode()}})
    started = time.monotonic()
    decoded = restored(cluster, TEAM, name, forged)
    assert time.monotonic() - started < 30
    assert decoded["token"] != original, "a new token, not the old one from memory"
    verify_token(operator, decoded["token"], operator.issuer_url(BY_NAME), "sts.example.com")
    events = wait_for("the SecretRestored Event", lambda: warning_events(cluster, TEAM, name, "SecretRestored") or None)
    assert events[0]["type"] == "Warning" and f"Secret {name}-token" in events[0]["message"]
    assert condition(get_json(cluster, "fid", name, "-n", TEAM))["status"] == "True"


def test_an_emptied_secret_or_an_added_key_is_written_again(cluster: Cluster, operator: Operator) -> None:
    name = "emptied"
    identity(cluster, TEAM, name, BY_NAME)
    # `data: null` in a merge patch removes every key.
    cluster.kubectl("patch", "secret", f"{name}-token", "-n", TEAM, "--type=json",
                    "-p", json.dumps([{"op": "remove", "path": "/data"}]))
    restored(cluster, TEAM, name, None)
    patch_secret(cluster, TEAM, name, {"data": {"extra": base64.b64encode(b"planted").decode()}})
    decoded = restored(cluster, TEAM, name, None)
    assert set(decoded) == {"token", "expires-at"}, decoded.keys()


def test_labels_and_annotations_of_the_user_are_left_alone(cluster: Cluster, operator: Operator) -> None:
    name = "labelled"
    identity(cluster, TEAM, name, BY_NAME)
    token = token_of(cluster, TEAM, name)
    passes = operator.metric("fedid_reconciles_total", {"controller": "identity"})
    cluster.kubectl("label", "secret", f"{name}-token", "-n", TEAM, "team=payments")
    cluster.kubectl("annotate", "secret", f"{name}-token", "-n", TEAM, "example.com/owner=payments")
    wait_for("a pass over the labelled Secret",
             lambda: operator.metric("fedid_reconciles_total", {"controller": "identity"}) >= passes + 1 or None)
    secret = get_json(cluster, "secret", f"{name}-token", "-n", TEAM)
    assert secret["metadata"]["labels"]["team"] == "payments"
    assert secret["metadata"]["annotations"]["example.com/owner"] == "payments"
    assert token_of(cluster, TEAM, name) == token, "a label is no reason for a new token"
    assert not warning_events(cluster, TEAM, name, "SecretRestored")


def gone(cluster: Cluster, namespace: str, name: str) -> bool:
    return cluster.kubectl("get", "secret", f"{name}-token", "-n", namespace, check=False).returncode != 0


def reason_of(cluster: Cluster, namespace: str, name: str) -> str | None:
    found = condition(get_json(cluster, "fid", name, "-n", namespace))
    return found["reason"] if found else None


def test_a_namespace_dropped_from_the_issuers_names_loses_its_token_at_once(cluster: Cluster,
                                                                          operator: Operator) -> None:
    name = "dropped"
    identity(cluster, TEAM, name, BY_NAME)
    cluster.kubectl("patch", "identityissuer", BY_NAME, "--type=merge",
                    "-p", json.dumps({"spec": {"allowedNamespaces": {"names": ["someone-else"]}}}))
    started = time.monotonic()
    wait_for("the token Secret deleted", lambda: gone(cluster, TEAM, name), timeout=20)
    assert time.monotonic() - started < 20
    found = get_json(cluster, "fid", name, "-n", TEAM)
    ready = condition(found)
    assert ready["reason"] == "NamespaceNotAllowed" and ready["status"] == "False"
    assert ready["message"].endswith("fedid keeps no token for it (its token Secret is deleted)"), ready["message"]
    assert "expiresAt" not in found["status"] and "secretName" not in found["status"], found["status"]
    # The policy back: a new token.
    cluster.kubectl("patch", "identityissuer", BY_NAME, "--type=merge",
                    "-p", json.dumps({"spec": {"allowedNamespaces": {"names": [TEAM]}}}))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=30s")
    verify_token(operator, token_of(cluster, TEAM, name), operator.issuer_url(BY_NAME), "sts.example.com")


def test_a_namespace_that_loses_its_label_loses_its_token(cluster: Cluster, operator: Operator) -> None:
    name = "unlabelled"
    identity(cluster, OTHER, name, BY_LABEL)
    cluster.kubectl("label", "namespace", OTHER, f"{LABEL}-")
    try:
        wait_for("the token Secret deleted", lambda: gone(cluster, OTHER, name), timeout=20)
        assert reason_of(cluster, OTHER, name) == "NamespaceNotAllowed"
    finally:
        cluster.kubectl("label", "namespace", OTHER, f"{LABEL}=yes", "--overwrite")
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", OTHER, "--timeout=30s")


def test_a_deleted_issuer_takes_its_tokens_along(cluster: Cluster, operator: Operator) -> None:
    temporary = f"tamper-temp-{RUN}"
    cluster.apply(issuer(operator, temporary, {"names": [TEAM]}))
    cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{temporary}", "--timeout=60s")
    name = "orphaned"
    identity(cluster, TEAM, name, temporary)
    # A foreign Secret of the same shape in the namespace is never touched.
    cluster.kubectl("create", "secret", "generic", "not-fedids", "-n", TEAM, "--from-literal=token=x")
    cluster.kubectl("delete", "identityissuer", temporary)
    wait_for("the token Secret deleted", lambda: gone(cluster, TEAM, name), timeout=20)
    assert reason_of(cluster, TEAM, name) == "IssuerNotFound"
    assert get_json(cluster, "secret", "not-fedids", "-n", TEAM)["metadata"]["name"] == "not-fedids"


def test_an_issuer_whose_url_path_is_taken_reports_url_conflict(cluster: Cluster, operator: Operator) -> None:
    """Two issuers with one URL path: fedid serves discovery by path, so only the one created first
    can be served. The newer reports URLConflict and makes no keys; its identities cannot be
    issued; once the older is gone, the newer takes the path over."""
    # Created within one second, the lower name wins: the names agree with the order here.
    older, newer = f"tamper-url-a-{RUN}", f"tamper-url-b-{RUN}"
    cluster.apply(issuer(operator, older, {"names": [TEAM]}))
    cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{older}", "--timeout=60s")
    served = operator.get(f"/issuers/{older}/.well-known/openid-configuration").json()
    clash = json.loads(issuer(operator, newer, {"names": [TEAM]}))
    clash["spec"]["issuerURL"] = operator.issuer_url(older)
    cluster.apply(json.dumps(clash))
    found = wait_for("URLConflict", lambda: (c if (c := condition(get_json(cluster, "identityissuer", newer)))
                                             and c["reason"] == "URLConflict" else None), timeout=30)
    assert found["status"] == "False" and f"served for IdentityIssuer {older}" in found["message"], found
    assert "activeKeyID" not in get_json(cluster, "identityissuer", newer).get("status", {})
    assert operator.get(f"/issuers/{older}/.well-known/openid-configuration").json() == served
    name = "clashing"
    cluster.apply(json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {"issuerRef": newer, "audiences": ["sts.example.com"]},
    }))
    not_ready = wait_for("IssuerNotReady", lambda: (c if (c := condition(get_json(cluster, "fid", name, "-n", TEAM)))
                                                    and c["reason"] == "IssuerNotReady" else None), timeout=30)
    assert "is served for IdentityIssuer" in not_ready["message"], not_ready
    assert gone(cluster, TEAM, name)

    cluster.kubectl("delete", "identityissuer", older)
    try:
        cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{newer}", "--timeout=30s")
        cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
        verify_token(operator, token_of(cluster, TEAM, name), operator.issuer_url(older), "sts.example.com")
    finally:
        cluster.kubectl("delete", "identityissuer", newer, "--wait=false", check=False)


def kid_of(token: str) -> str:
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    return header["kid"]


def key_ring(issuer_name: str) -> str:
    return f"fedid-keys-{issuer_name}"


@pytest.mark.parametrize("loss", ["deleted", "corrupted"])
def test_a_lost_key_ring_is_replaced_and_every_token_reissued(cluster: Cluster, operator: Operator,
                                                              loss: str) -> None:
    """The key ring deleted, or overwritten with garbage: the issuer reports it (Warning Event
    KeyRingLost, fedid_issuer_key_rings_lost_total), a new key signs at once, and the tokens
    signed by the lost key (which no longer verify) are reissued within seconds."""
    name = f"keyless-{loss}"
    ring_issuer = f"tamper-ring-{loss}-{RUN}"
    cluster.apply(issuer(operator, ring_issuer, {"names": [TEAM]}))
    cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{ring_issuer}", "--timeout=60s")
    try:
        identity(cluster, TEAM, name, ring_issuer)
        before = token_of(cluster, TEAM, name)
        old_kid = kid_of(before)
        losses = operator.metric("fedid_issuer_key_rings_lost_total", {"issuer": ring_issuer})
        if loss == "deleted":
            cluster.kubectl("delete", "secret", key_ring(ring_issuer), "-n", "fedid-system")
        else:
            garbage = base64.b64encode(b"{not a key ring").decode()
            cluster.kubectl("patch", "secret", key_ring(ring_issuer), "-n", "fedid-system", "--type=merge",
                            "-p", json.dumps({"data": {"keys.json": garbage}}))

        def reissued() -> str | None:
            token = token_of(cluster, TEAM, name)
            return token if kid_of(token) != old_kid else None
        token = wait_for("a token signed by the new key", reissued, timeout=30)
        status = get_json(cluster, "identityissuer", ring_issuer)["status"]
        assert status["activeKeyID"] == kid_of(token) and old_kid not in status["publishedKeyIDs"]
        verify_token(operator, token, operator.issuer_url(ring_issuer), "sts.example.com")
        def lost_events() -> list[dict] | None:
            listed = json.loads(cluster.kubectl("get", "events", "-A", "-o", "json").stdout)["items"]
            return [e for e in listed if e.get("reason") == "KeyRingLost"
                    and e["involvedObject"]["name"] == ring_issuer] or None
        events = wait_for("the KeyRingLost Event", lost_events)
        expected = "deleted" if loss == "deleted" else "unreadable"
        assert expected in events[0]["message"] and events[0]["type"] == "Warning", events[0]
        assert operator.metric("fedid_issuer_key_rings_lost_total", {"issuer": ring_issuer}) == losses + 1
        assert condition(get_json(cluster, "fid", name, "-n", TEAM))["status"] == "True"
    finally:
        cluster.kubectl("delete", "identityissuer", ring_issuer, "--wait=false", check=False)


def test_the_chart_can_protect_the_key_rings(cluster: Cluster, operator: Operator, tmp_path) -> None:
    """keyRingProtection.enabled: the real apiserver refuses an admin's delete or edit of a key
    ring, while fedid's ServiceAccount and the users in keyRingProtection.allowedUsers
    (impersonated, server-side dry run) may still replace it; another ServiceAccount with the
    same RBAC rights may not."""
    from fedid_harness import OPERATOR_NAMESPACE, install_chart_service_account
    ring = key_ring(BY_NAME)
    restore, other = f"restore-{RUN}", f"other-{RUN}"
    for account in (restore, other):
        cluster.kubectl("create", "serviceaccount", account, "-n", OPERATOR_NAMESPACE)
    cluster.kubectl("create", "role", f"ring-editor-{RUN}", "-n", OPERATOR_NAMESPACE,
                    "--verb=get,delete,patch", "--resource=secrets")
    cluster.kubectl("create", "rolebinding", f"ring-editor-{RUN}", "-n", OPERATOR_NAMESPACE,
                    f"--role=ring-editor-{RUN}", f"--serviceaccount={OPERATOR_NAMESPACE}:{restore}",
                    f"--serviceaccount={OPERATOR_NAMESPACE}:{other}")
    install_chart_service_account(cluster, OPERATOR_NAMESPACE, tmp_path, values=(
        "keyRingProtection.enabled=true",
        f"keyRingProtection.allowedUsers={{system:serviceaccount:{OPERATOR_NAMESPACE}:{restore}}}"))
    try:
        def refused() -> str | None:
            result = cluster.kubectl("delete", "secret", ring, "-n", OPERATOR_NAMESPACE, "--dry-run=server", check=False)
            return result.stderr if result.returncode != 0 else None
        message = wait_for("the policy to refuse a delete", refused, timeout=30)
        assert f"holds the signing keys of IdentityIssuer {BY_NAME}: only fedid may change or delete it" in message
        edited = cluster.kubectl("annotate", "secret", ring, "-n", OPERATOR_NAMESPACE, "x=y", check=False)
        assert edited.returncode != 0 and "only fedid may change or delete it" in edited.stderr, edited.stderr
        as_fedid = cluster.kubectl("delete", "secret", ring, "-n", OPERATOR_NAMESPACE, "--dry-run=server",
                                   f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:fedid", check=False)
        assert as_fedid.returncode == 0, as_fedid.stderr
        # allowedUsers: the restore job may; another account with the very same RBAC rights may not.
        as_restore = cluster.kubectl("delete", "secret", ring, "-n", OPERATOR_NAMESPACE, "--dry-run=server",
                                     f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{restore}", check=False)
        assert as_restore.returncode == 0, as_restore.stderr
        as_other = cluster.kubectl("delete", "secret", ring, "-n", OPERATOR_NAMESPACE, "--dry-run=server",
                                   f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{other}", check=False)
        assert as_other.returncode != 0 and "only fedid may change or delete it" in as_other.stderr, as_other.stderr
        # Other Secrets of the namespace are not covered.
        cluster.kubectl("create", "secret", "generic", f"plain-{RUN}", "-n", OPERATOR_NAMESPACE, "--from-literal=a=b")
        cluster.kubectl("delete", "secret", f"plain-{RUN}", "-n", OPERATOR_NAMESPACE)
        assert get_json(cluster, "secret", ring, "-n", OPERATOR_NAMESPACE)["metadata"]["name"] == ring
    finally:
        install_chart_service_account(cluster, OPERATOR_NAMESPACE, tmp_path, values=("keyRingProtection.enabled=false",))
        for kind, name in (("rolebinding", f"ring-editor-{RUN}"), ("role", f"ring-editor-{RUN}"),
                           ("serviceaccount", restore), ("serviceaccount", other)):
            cluster.kubectl("delete", kind, name, "-n", OPERATOR_NAMESPACE, "--ignore-not-found", check=False)


def test_the_private_key_scan_finds_a_key_when_there_is_one(cluster: Cluster, operator: Operator) -> None:
    """The scan every chart_operator module runs over logs, metrics, statuses and Events (see
    fedid_harness.private_keys_in) can fail: given a real key ring's PEM it reports it."""
    from fedid_harness import OPERATOR_NAMESPACE, private_keys_in
    ring = json.loads(secret_data(cluster, OPERATOR_NAMESPACE, key_ring(BY_NAME))["decoded"]["keys.json"])
    pem = ring["keys"][0]["privateKeyPem"]
    assert len(private_keys_in(cluster, f"log line: {pem.splitlines()[1]}")) == 1
    assert private_keys_in(cluster, pem)
    assert private_keys_in(cluster, "nothing to see") == []
