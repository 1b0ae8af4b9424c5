"""End-to-end behaviour of the fedid operator on a real control plane.

`fedid run` runs out of cluster as a process, authenticated as the Helm chart's
ServiceAccount, so every test here also proves the chart's RBAC is sufficient;
kubectl creates issuers and identities the way a user would; tokens are
verified with PyJWT against the JWKS fetched over HTTPS from the operator.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import jwt
import pytest

from conftest import REPO_ROOT, Cluster, wait_for
from fedid_harness import (
    OPERATOR_NAMESPACE,
    Operator,
    condition,
    events_for,
    fedid_binary,
    get_json,
    install_chart_service_account,
    jwks_for,
    jwts_in,
    secret_data,
    verify_token,
    wait_for_reason,
)

ISSUER = "ci"
# Namespaces unique to this run, so a reused cluster (FEDID_E2E_CLUSTER) starts clean.
RUN = uuid.uuid4().hex[:6]
TEAM = f"team-a-{RUN}"
OTHER_TEAM = f"team-b-{RUN}"
LABELLED_TEAM = f"team-c-{RUN}"


def issuer_manifest(operator: Operator, name: str = ISSUER, **signing: str) -> str:
    return json.dumps(
        {
            "apiVersion": "fedid.dev/v1alpha1",
            "kind": "IdentityIssuer",
            "metadata": {"name": name, "annotations": {"fedid.dev/default-issuer": "true"}},
            "spec": {
                "issuerURL": operator.issuer_url(name),
                "signing": {"prepublishPeriod": "2s", "retirementMargin": "1m", **signing},
                "allowedNamespaces": {"names": [TEAM], "selector": {"matchLabels": {"fedid.dev/ci": "enabled"}}},
                "tokenLifetime": {"default": "1h", "maximum": "2h"},
                "claims": [{"name": "cluster", "string": "e2e"}],
            },
        }
    )


def identity_manifest(name: str, namespace: str = TEAM, **spec: object) -> str:
    body = {"audiences": ["sts.example.com"], **spec}
    return json.dumps(
        {
            "apiVersion": "fedid.dev/v1alpha1",
            "kind": "FederatedIdentity",
            "metadata": {"name": name, "namespace": namespace},
            "spec": body,
        }
    )


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    for crd in ("identityissuers.fedid.dev", "federatedidentities.fedid.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    for namespace in (OPERATOR_NAMESPACE, TEAM, OTHER_TEAM, LABELLED_TEAM):
        cluster.kubectl("create", "namespace", namespace, check=False)
    cluster.kubectl("label", "namespace", LABELLED_TEAM, "fedid.dev/ci=enabled", "--overwrite")
    workdir = Path(tempfile.mkdtemp(prefix="fedid-e2e-operator-"))
    service_account = install_chart_service_account(cluster, OPERATOR_NAMESPACE, workdir)
    running = Operator(cluster=cluster, binary=fedid_binary(), workdir=workdir, kubeconfig=service_account)
    running.start()
    wait_for("the CRDs to be served", lambda: cluster.apply(issuer_manifest(running)).returncode == 0)
    cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{ISSUER}", "--timeout=60s")
    try:
        yield running
    finally:
        running.stop()
        logs = running.logs()
        # Whatever happened, no token, key or Secret data may ever reach the logs.
        assert "PRIVATE KEY" not in logs
        assert not jwts_in(logs), f"a JWT appeared in the operator's logs: {jwts_in(logs)}"


def test_identity_gets_a_token_that_verifies_against_the_served_jwks(cluster: Cluster, operator: Operator) -> None:
    name = "deploy"
    cluster.apply(
        identity_manifest(
            name,
            audiences=["sts.amazonaws.com", "vault"],
            lifetime="45m",
            claims=[
                {"name": "repository", "string": "acme/web"},
                {"name": "protected", "boolean": True},
                {"name": "run_attempt", "integer": 3},
            ],
        )
    )
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")

    identity = get_json(cluster, "fid", name, "-n", TEAM)
    status = identity["status"]
    assert status["secretName"] == f"{name}-token"
    assert status["observedGeneration"] == identity["metadata"]["generation"]
    assert condition(identity)["reason"] == "Issued"

    secret = secret_data(cluster, TEAM, f"{name}-token")
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "fedid"
    assert secret["metadata"]["labels"]["fedid.dev/identity"] == name
    [owner] = secret["metadata"]["ownerReferences"]
    assert owner["kind"] == "FederatedIdentity" and owner["controller"] is True
    assert owner["uid"] == identity["metadata"]["uid"]
    assert set(secret["decoded"]) == {"token", "expires-at"}

    token = secret["decoded"]["token"]
    claims = verify_token(operator, token, operator.issuer_url(ISSUER), "vault")
    assert claims["aud"] == ["sts.amazonaws.com", "vault"]
    assert claims["sub"] == f"system:fedid:{TEAM}:{name}"
    assert claims["namespace"] == TEAM and claims["identity"] == name
    assert claims["cluster"] == "e2e"
    assert claims["repository"] == "acme/web"
    assert claims["protected"] is True
    assert claims["run_attempt"] == 3
    assert claims["exp"] - claims["iat"] == 45 * 60
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["typ"] == "JWT"
    assert header["kid"] == get_json(cluster, "identityissuer", ISSUER)["status"]["activeKeyID"]

    expires_at = datetime.datetime.fromisoformat(secret["decoded"]["expires-at"].replace("Z", "+00:00"))
    assert int(expires_at.timestamp()) == claims["exp"]
    assert status["expiresAt"].startswith(secret["decoded"]["expires-at"][:16])

    # The CLI verifies it too, against the JWKS URL.
    verified = subprocess.run(
        [str(operator.binary), "token", "verify", "--jwks", f"{operator.issuer_url(ISSUER)}/.well-known/jwks.json",
         "--ca-file", str(operator.ca), "--audience", "vault", "--issuer", operator.issuer_url(ISSUER), "-"],
        input=token, capture_output=True, text=True, timeout=30,
    )
    assert verified.returncode == 0, verified.stderr
    rejected = subprocess.run(
        [str(operator.binary), "token", "verify", "--jwks", f"{operator.issuer_url(ISSUER)}/.well-known/jwks.json",
         "--ca-file", str(operator.ca), "--audience", "someone-else", "-"],
        input=token, capture_output=True, text=True, timeout=30,
    )
    assert rejected.returncode != 0 and "aud" in (rejected.stderr + rejected.stdout).lower()

    printed = cluster.kubectl("get", "fid", name, "-n", TEAM).stdout
    for column in ("READY", "ISSUER", "EXPIRES", "AGE"):
        assert column in printed


def test_discovery_and_jwks_are_cacheable(operator: Operator) -> None:
    path = f"/issuers/{ISSUER}/.well-known/openid-configuration"
    response = operator.get(path)
    assert response.status_code == 200
    document = response.json()
    assert document["issuer"] == operator.issuer_url(ISSUER)
    assert document["jwks_uri"] == f"{operator.issuer_url(ISSUER)}/.well-known/jwks.json"
    assert document["response_types_supported"] == ["id_token"]
    assert document["subject_types_supported"] == ["public"]
    assert "RS256" in document["id_token_signing_alg_values_supported"]
    assert {"sub", "aud", "namespace", "identity", "cluster"} <= set(document["claims_supported"])
    max_age = int(response.headers["Cache-Control"].split("max-age=")[1].split(",")[0])
    assert 0 < max_age <= 3600
    etag = response.headers["ETag"]
    again = operator.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["ETag"] == etag

    jwks = operator.get(f"/issuers/{ISSUER}/.well-known/jwks.json")
    assert jwks.status_code == 200 and jwks.headers["ETag"]
    for key in jwks.json()["keys"]:
        assert key["use"] == "sig" and key["kid"] and key["alg"] in ("RS256", "ES256")
        assert "d" not in key and "p" not in key, "a private key parameter was published"
    assert operator.get("/issuers/nope/.well-known/jwks.json").status_code == 404


def test_issuer_status_and_static_files(cluster: Cluster, operator: Operator) -> None:
    issuer = get_json(cluster, "identityissuer", ISSUER)
    status = issuer["status"]
    assert condition(issuer)["status"] == "True"
    assert status["activeKeyID"] in status["publishedKeyIDs"]
    assert status["discoveryURL"] == f"{operator.issuer_url(ISSUER)}/.well-known/openid-configuration"
    assert status["jwksURL"] == f"{operator.issuer_url(ISSUER)}/.well-known/jwks.json"
    assert status["nextRotationTime"]

    # Private keys live only in the operator's namespace, never where identities live.
    keys = get_json(cluster, "secrets", "-A", "-l", f"fedid.dev/issuer={ISSUER}")["items"]
    namespaces = {s["metadata"]["namespace"] for s in keys}
    assert OPERATOR_NAMESPACE in namespaces
    assert not namespaces & {TEAM, OTHER_TEAM, LABELLED_TEAM}

    # `fedid issuer files` prints what a static site would host, identical to what is served.
    printed = subprocess.run(
        [str(operator.binary), "issuer", "files", ISSUER, "--namespace", OPERATOR_NAMESPACE],
        capture_output=True, text=True, env=cluster.env(), timeout=30,
    )
    assert printed.returncode == 0, printed.stderr
    files = json.loads(printed.stdout)
    assert files["openid-configuration"] == operator.get(f"/issuers/{ISSUER}/.well-known/openid-configuration").json()
    wait_for(
        "the static JWKS to match the served one",
        lambda: json.loads(
            subprocess.run(
                [str(operator.binary), "issuer", "files", ISSUER, "--namespace", OPERATOR_NAMESPACE],
                capture_output=True, text=True, env=cluster.env(), timeout=30,
            ).stdout
        )["jwks.json"] == operator.get(f"/issuers/{ISSUER}/.well-known/jwks.json").json(),
    )


def test_short_lifetime_identity_refreshes_once_per_renewal(cluster: Cluster, operator: Operator) -> None:
    name = "short"
    cluster.apply(identity_manifest(name, lifetime="30s"))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    first = secret_data(cluster, TEAM, f"{name}-token")
    first_claims = jwt.decode(first["decoded"]["token"], options={"verify_signature": False})
    status = get_json(cluster, "fid", name, "-n", TEAM)["status"]
    renew_at = datetime.datetime.fromisoformat(status["renewAt"].replace("Z", "+00:00")).timestamp()
    # 2/3 of 30 s with ±10% jitter, and never later than 5 s (the test margin) before expiry.
    assert first_claims["iat"] + 17 <= renew_at <= first_claims["exp"] - 5

    # Watch every version of the Secret while two refreshes happen.
    watch = subprocess.Popen(
        [str(cluster.bin / "kubectl"), "get", "secret", f"{name}-token", "-n", TEAM, "--watch",
         "-o", "jsonpath={.metadata.resourceVersion} {.data.token}{\"\\n\"}"],
        stdout=subprocess.PIPE, text=True, env=cluster.env(),
    )
    try:
        tokens: list[str] = []

        def refreshed_twice() -> bool:
            current = secret_data(cluster, TEAM, f"{name}-token")["decoded"]["token"]
            if not tokens or tokens[-1] != current:
                tokens.append(current)
            return len(tokens) >= 3

        tokens.append(first["decoded"]["token"])
        wait_for("two refreshes of the token", refreshed_twice, timeout=90)
    finally:
        watch.terminate()
        seen, _ = watch.communicate(timeout=10)
    versions = [line.split(" ", 1) for line in seen.splitlines() if line.strip()]
    # Every version of the Secret carries a new token: exactly one write per refresh.
    assert len(versions) >= 3
    assert len({token for _, token in versions}) == len(versions), versions

    claims = [jwt.decode(token, options={"verify_signature": False}) for token in tokens[:3]]
    for earlier, later in zip(claims, claims[1:]):
        assert later["jti"] != earlier["jti"]
        assert later["iat"] - earlier["iat"] >= 17, "refreshed before its renewal time"
        assert later["iat"] < earlier["exp"] - 4, "refreshed too late: within the margin before expiry"
    verify_token(operator, tokens[2], operator.issuer_url(ISSUER), "sts.example.com")

    secret = json.loads(
        cluster.kubectl("get", "secret", f"{name}-token", "-n", TEAM, "-o", "json", "--show-managed-fields").stdout
    )
    managers = {entry["manager"] for entry in secret["metadata"]["managedFields"]}
    assert managers == {"fedid.dev/operator"}
    assert get_json(cluster, "fid", name, "-n", TEAM)["status"].get("failedAttempts", 0) == 0


def test_forced_rotation_switches_kid_and_old_tokens_keep_verifying(cluster: Cluster, operator: Operator) -> None:
    old_name = "before-rotation"
    cluster.apply(identity_manifest(old_name))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{old_name}", "-n", TEAM, "--timeout=60s")
    old_token = secret_data(cluster, TEAM, f"{old_name}-token")["decoded"]["token"]
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    assert old_kid == get_json(cluster, "identityissuer", ISSUER)["status"]["activeKeyID"]

    cluster.kubectl("annotate", "identityissuer", ISSUER, f"fedid.dev/rotate-keys={uuid.uuid4().hex}", "--overwrite")

    def rotated() -> str | None:
        active = get_json(cluster, "identityissuer", ISSUER)["status"].get("activeKeyID")
        return active if active and active != old_kid else None

    new_kid = wait_for("the issuer to sign with a new key", rotated, timeout=60)
    published = get_json(cluster, "identityissuer", ISSUER)["status"]["publishedKeyIDs"]
    assert old_kid in published and new_kid in published

    new_name = "after-rotation"
    cluster.apply(identity_manifest(new_name))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{new_name}", "-n", TEAM, "--timeout=60s")
    new_token = secret_data(cluster, TEAM, f"{new_name}-token")["decoded"]["token"]
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid

    wait_for(
        "the served JWKS to hold both keys",
        lambda: {old_kid, new_kid} <= {k["kid"] for k in jwks_for(operator, operator.issuer_url(ISSUER))["keys"]},
    )
    verify_token(operator, old_token, operator.issuer_url(ISSUER), "sts.example.com")
    verify_token(operator, new_token, operator.issuer_url(ISSUER), "sts.example.com")
    reasons = {event["reason"] for event in events_for(cluster, "default", ISSUER)}
    assert "KeyCreated" in reasons


def test_deleting_an_identity_garbage_collects_its_secret(cluster: Cluster, operator: Operator) -> None:
    name = "ephemeral"
    cluster.apply(identity_manifest(name))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    cluster.kubectl("delete", "fid", name, "-n", TEAM)

    def gone() -> bool:
        result = cluster.kubectl("get", "secret", f"{name}-token", "-n", TEAM, check=False)
        return result.returncode != 0 and "NotFound" in result.stderr

    wait_for("the garbage collector to delete the identity's Secret", gone, timeout=60)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"claims": [{"name": "sub", "string": "admin"}]}, "reserved"),
        ({"claims": [{"name": "namespace", "string": "kube-system"}]}, "reserved"),
        ({"claims": [{"name": "x", "string": "a", "boolean": True}]}, "exactly one of"),
        ({"claims": [{"name": "x"}]}, "exactly one of"),
        ({"claims": [{"name": "x", "string": "a"}, {"name": "x", "integer": 1}]}, "Duplicate value"),
        ({"audiences": []}, "spec.audiences"),
        ({"audiences": [f"aud-{i}" for i in range(11)]}, "spec.audiences"),
        ({"lifetime": "10 minutes"}, "spec.lifetime"),
        ({"secretName": "Not_A_Name"}, "spec.secretName"),
    ],
    ids=["reserved-sub", "reserved-namespace", "two-values", "no-value", "duplicate", "no-audience",
         "eleven-audiences", "bad-duration", "bad-secret-name"],
)
def test_invalid_identities_are_rejected_at_apply_time(cluster: Cluster, operator: Operator, spec: dict, message: str) -> None:
    result = cluster.kubectl("apply", "-f", "-", input=identity_manifest("invalid", **spec), check=False)
    assert result.returncode != 0, f"accepted: {spec}"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://issuer.example.com", "https"),
        ("https://issuer.example.com/?tenant=a", "query"),
        ("https://issuer.example.com/#frag", "fragment"),
        ("https://issuer.example.com/", "trailing slash"),
    ],
)
def test_invalid_issuer_urls_are_rejected_at_apply_time(cluster: Cluster, operator: Operator, url: str, message: str) -> None:
    manifest = json.dumps(
        {"apiVersion": "fedid.dev/v1alpha1", "kind": "IdentityIssuer", "metadata": {"name": "invalid"},
         "spec": {"issuerURL": url}}
    )
    result = cluster.kubectl("apply", "-f", "-", input=manifest, check=False)
    assert result.returncode != 0, f"accepted {url}"
    assert message in result.stderr, result.stderr


def test_lifetime_beyond_the_issuer_maximum_is_reported(cluster: Cluster, operator: Operator) -> None:
    name = "too-long"
    cluster.apply(identity_manifest(name, lifetime="3h"))
    identity = wait_for_reason(cluster, TEAM, name, "LifetimeTooLong")
    assert condition(identity)["status"] == "False"
    assert condition(identity)["message"] == "lifetime 3h is longer than the issuer's maximum of 2h"
    assert identity["status"]["lastFailureReason"] == "LifetimeTooLong"
    wait_for(
        "a LifetimeTooLong Warning event",
        lambda: any(e["reason"] == "LifetimeTooLong" and e["type"] == "Warning" for e in events_for(cluster, TEAM, name)),
    )
    cluster.apply(identity_manifest(name, lifetime="1h"))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")


def test_foreign_secret_is_never_taken_over(cluster: Cluster, operator: Operator) -> None:
    cluster.kubectl("create", "secret", "generic", "someone-elses", "-n", TEAM, "--from-literal=token=theirs")
    before = secret_data(cluster, TEAM, "someone-elses")
    name = "grabber"
    cluster.apply(identity_manifest(name, secretName="someone-elses"))
    identity = wait_for_reason(cluster, TEAM, name, "SecretConflict")
    assert condition(identity)["status"] == "False"
    wait_for(
        "a SecretConflict Warning event",
        lambda: any(e["reason"] == "SecretConflict" and e["type"] == "Warning" for e in events_for(cluster, TEAM, name)),
    )
    after = secret_data(cluster, TEAM, "someone-elses")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["decoded"] == {"token": "theirs"}
    assert "ownerReferences" not in after["metadata"]
    # fedid's identity cannot even GET it (its cluster-wide list right would return it: see test_chart.py).
    assert operator.kubeconfig is not None
    denied = cluster.kubectl("--kubeconfig", str(operator.kubeconfig), "get", "secret", "someone-elses", "-n", TEAM,
                             check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr, denied.stderr


def test_namespace_policy_is_enforced(cluster: Cluster, operator: Operator) -> None:
    cluster.apply(identity_manifest("outsider", namespace=OTHER_TEAM))
    identity = wait_for_reason(cluster, OTHER_TEAM, "outsider", "NamespaceNotAllowed")
    assert condition(identity)["status"] == "False"
    assert cluster.kubectl("get", "secret", "outsider-token", "-n", OTHER_TEAM, check=False).returncode != 0

    cluster.apply(identity_manifest("labelled", namespace=LABELLED_TEAM))
    cluster.kubectl("wait", "--for=condition=Ready", "fid/labelled", "-n", LABELLED_TEAM, "--timeout=60s")

    # Labelling the refused namespace lets its identity in at once: the namespace watch
    # requeues it (the slow recheck of permanent failures is 5 minutes away).
    cluster.kubectl("label", "namespace", OTHER_TEAM, "fedid.dev/ci=enabled")
    cluster.kubectl("wait", "--for=condition=Ready", "fid/outsider", "-n", OTHER_TEAM, "--timeout=30s")
    assert secret_data(cluster, OTHER_TEAM, "outsider-token")["decoded"]["token"]


def test_unknown_issuer_is_reported(cluster: Cluster, operator: Operator) -> None:
    cluster.apply(identity_manifest("lost", issuerRef="does-not-exist"))
    identity = wait_for_reason(cluster, TEAM, "lost", "IssuerNotFound")
    assert "does-not-exist" in condition(identity)["message"]


def test_restart_does_not_rewrite_valid_tokens(cluster: Cluster, operator: Operator) -> None:
    name = "survivor"
    cluster.apply(identity_manifest(name))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")

    def versions() -> dict[str, str]:
        secrets = get_json(cluster, "secrets", "-A", "-l", "fedid.dev/identity,fedid.dev/identity!=short")["items"]
        return {
            f"{s['metadata']['namespace']}/{s['metadata']['name']}": s["metadata"]["resourceVersion"] for s in secrets
        }

    def identity_versions() -> dict[str, str]:
        return {
            f"{i['metadata']['namespace']}/{i['metadata']['name']}": i["metadata"]["resourceVersion"]
            for i in get_json(cluster, "fid", "-A")["items"]
            if i["metadata"]["name"] != "short"
        }

    before = versions()
    assert f"{TEAM}/{name}-token" in before
    identities_before = identity_versions()
    identities = len(identities_before) + 1
    operator.stop()
    operator.start()
    # Every identity has been reconciled at least once by the new process...
    wait_for(
        "the restarted operator to reconcile every identity",
        lambda: operator.metric("fedid_reconciles_total", {"controller": "identity"}) >= identities,
    )
    # ...and none of those still-valid tokens was re-minted, nor any status rewritten.
    assert versions() == before
    assert identity_versions() == identities_before


def test_chart_upgrade_keeps_keys_and_tokens_valid(cluster: Cluster, operator: Operator) -> None:
    chart_issuer = f"chart-{RUN}"
    helm = str(cluster.bin / "helm")

    def upgrade(*values: str) -> None:
        result = subprocess.run(
            [helm, "upgrade", "fedid", str(REPO_ROOT / "charts" / "fedid"), "-n", OPERATOR_NAMESPACE,
             "--reuse-values", "--skip-crds", *values],
            capture_output=True, text=True, env=cluster.env(), timeout=120,
        )
        assert result.returncode == 0, result.stderr

    upgrade(
        "--set", "issuer.create=true", "--set", f"issuer.name={chart_issuer}", "--set", "issuer.default=false",
        "--set", f"issuer.url={operator.issuer_url(chart_issuer)}", "--set", "issuer.signing.prepublishPeriod=2s",
        "--set", f"issuer.allowedNamespaces.names={{{TEAM}}}",
    )
    cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{chart_issuer}", "--timeout=60s")
    cluster.apply(identity_manifest("chart-user", issuerRef=chart_issuer))
    cluster.kubectl("wait", "--for=condition=Ready", "fid/chart-user", "-n", TEAM, "--timeout=60s")
    keys_before = get_json(cluster, "secret", f"fedid-keys-{chart_issuer}", "-n", OPERATOR_NAMESPACE)
    token_before = secret_data(cluster, TEAM, "chart-user-token")

    # A changed value: more replicas, a longer retirement margin, debug logs.
    upgrade("--set", "replicaCount=3", "--set", "issuer.signing.retirementMargin=2h", "--set", "logLevel=debug")
    assert get_json(cluster, "deployment", "fedid", "-n", OPERATOR_NAMESPACE)["spec"]["replicas"] == 3
    wait_for(
        "the issuer to observe the upgraded spec",
        lambda: (issuer := get_json(cluster, "identityissuer", chart_issuer))["status"].get("observedGeneration")
        == issuer["metadata"]["generation"] and condition(issuer)["status"] == "True",
    )
    keys_after = get_json(cluster, "secret", f"fedid-keys-{chart_issuer}", "-n", OPERATOR_NAMESPACE)
    assert keys_after["metadata"]["resourceVersion"] == keys_before["metadata"]["resourceVersion"], "keys changed"
    token_after = secret_data(cluster, TEAM, "chart-user-token")
    assert token_after["decoded"]["token"] == token_before["decoded"]["token"]
    verify_token(operator, token_after["decoded"]["token"], operator.issuer_url(chart_issuer), "sts.example.com")
    cluster.kubectl("wait", "--for=condition=Ready", "fid/chart-user", "-n", TEAM, "--timeout=10s")


def test_removing_the_default_mark_reaches_the_identities_that_used_it(cluster: Cluster, operator: Operator) -> None:
    # An identity without issuerRef uses the default issuer. When the issuer loses the
    # default annotation, the identity must learn it at once (not at its next renewal, an
    # hour away), and recover as soon as the mark is back.
    name = "follows-default"
    cluster.apply(identity_manifest(name))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    token_before = secret_data(cluster, TEAM, f"{name}-token")["decoded"]["token"]
    cluster.kubectl("annotate", "identityissuer", ISSUER, "fedid.dev/default-issuer-")
    try:
        identity = wait_for_reason(cluster, TEAM, name, "NoDefaultIssuer", timeout=30)
        assert condition(identity)["status"] == "False"
        assert "fedid.dev/default-issuer" in condition(identity)["message"]
    finally:
        cluster.kubectl("annotate", "--overwrite", "identityissuer", ISSUER, "fedid.dev/default-issuer=true")
    wait_for_reason(cluster, TEAM, name, "Issued", timeout=30)
    # The token stayed valid throughout: recovering rewrites nothing.
    assert secret_data(cluster, TEAM, f"{name}-token")["decoded"]["token"] == token_before
