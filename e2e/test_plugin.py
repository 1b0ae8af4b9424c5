"""The kubectl plugin: the fedid binary copied as `kubectl-fedid` into a directory on PATH, run as
`kubectl fedid ...` by the cluster's own kubectl against the real control plane, while `fedid run`
(as the chart's ServiceAccount) reconciles. The identities with an exchange trade their tokens at
a scripted HTTPS token service on loopback (`peers/recorder.py`).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import jwt
import pytest

from conftest import Cluster, wait_for
from fedid_harness import (
    Operator,
    chart_operator,
    condition,
    fedid_binary,
    get_json,
    jwts_in,
    secret_data,
    token_service,
    verify_token,
)
from peers.recorder import Recorder

RUN = uuid.uuid4().hex[:6]
TEAM = f"plugin-{RUN}"
ISSUER = f"plugin-{RUN}"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorder, str]]:
    with token_service(tmp_path_factory.mktemp("token-service")) as running:
        yield running


@pytest.fixture(scope="module")
def operator(cluster: Cluster, service: tuple[Recorder, str]) -> Iterator[Operator]:
    recorder, _ = service
    with chart_operator(cluster, "fedid-plugin", [TEAM]) as running:
        issuer = {
            "apiVersion": "fedid.dev/v1alpha1",
            "kind": "IdentityIssuer",
            "metadata": {"name": ISSUER},
            "spec": {
                "issuerURL": running.issuer_url(ISSUER),
                "signing": {"prepublishPeriod": "2s", "retirementMargin": "1m"},
                "allowedNamespaces": {"names": [TEAM]},
                "tokenLifetime": {"default": "1h", "maximum": "2h"},
                "exchange": {"allowedEndpoints": [f"{recorder.url}/allowed/"]},
            },
        }
        wait_for("the issuer to be accepted", lambda: cluster.apply(json.dumps(issuer)).returncode == 0)
        cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{ISSUER}", "--timeout=60s")
        yield running
        logs = running.logs()
        assert "at-" not in logs, "exchanged credentials appeared in the operator's logs"
    cluster.kubectl("delete", "identityissuer", ISSUER, "--wait=false", check=False)


@pytest.fixture(scope="module")
def plugin_path(cluster: Cluster) -> str:
    """PATH with a directory holding only a copy of the fedid binary named kubectl-fedid."""
    directory = Path(tempfile.mkdtemp(prefix="fedid-plugin-"))
    shutil.copy2(fedid_binary(), directory / "kubectl-fedid")
    return f"{directory}{os.pathsep}{cluster.env()['PATH']}"


def kubectl_fedid(cluster: Cluster, plugin_path: str, *args: str, env: dict[str, str] | None = None,
                  timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`kubectl fedid ARGS` with the cluster's kubectl and the plugin on PATH."""
    return subprocess.run(
        [str(cluster.bin / "kubectl"), "fedid", *args],
        capture_output=True, text=True, timeout=timeout,
        env={**cluster.env(), "PATH": plugin_path, **(env or {})},
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def fails(result: subprocess.CompletedProcess[str], message: str) -> str:
    """The one error line of a failed command, checked to contain `message`."""
    assert result.returncode == 1, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    return lines[0]


def identity_manifest(name: str, **spec: object) -> str:
    return json.dumps({
        "apiVersion": "fedid.dev/v1alpha1",
        "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {"issuerRef": ISSUER, "audiences": ["sts.example.com", "vault"], **spec},
    })


def exchanging_manifest(name: str, ca: str, url: str, **spec: object) -> str:
    exchange = {"caBundle": ca, "timeout": "2s", "oauth2": {"tokenURL": url}}
    return identity_manifest(name, exchange=exchange, **spec)


def ready(cluster: Cluster, name: str) -> dict:
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    return get_json(cluster, "fid", name, "-n", TEAM)


def stored_token(cluster: Cluster, name: str) -> str:
    return secret_data(cluster, TEAM, f"{name}-token")["decoded"]["token"]


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def field(text: str, name: str) -> str:
    """The value of the first `name: value` line of a plugin table."""
    values = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().startswith(f"{name}:")]
    assert values, f"no {name!r} line in:\n{text}"
    return values[0]


def timestamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_kubectl_finds_the_plugin(cluster: Cluster, plugin_path: str) -> None:
    listed = subprocess.run([str(cluster.bin / "kubectl"), "plugin", "list"], capture_output=True, text=True,
                            env={**cluster.env(), "PATH": plugin_path}, timeout=30)
    assert "kubectl-fedid" in listed.stdout, listed.stdout + listed.stderr
    usage = ok(kubectl_fedid(cluster, plugin_path, "--help"))
    assert "Usage: kubectl fedid" in usage
    for command in ("status", "renew", "rotate", "token"):
        assert command in usage
    # A symlink named kubectl-fedid is the plugin as well (its name decides, not the target's).
    linked = Path(tempfile.mkdtemp(prefix="fedid-plugin-link-"))
    (linked / "kubectl-fedid").symlink_to(fedid_binary().resolve())
    linked_path = f"{linked}{os.pathsep}{cluster.env()['PATH']}"
    assert "Usage: kubectl fedid" in ok(kubectl_fedid(cluster, linked_path, "status", "--help"))
    # Under its own name the binary keeps its commands.
    assert "Usage: fedid <COMMAND>" in ok(subprocess.run([str(fedid_binary()), "--help"], capture_output=True,
                                                         text=True, timeout=30))


def test_status_shows_the_identity_its_token_and_its_verification(
    cluster: Cluster, operator: Operator, plugin_path: str
) -> None:
    name = "web"
    cluster.apply(identity_manifest(name, claims=[{"name": "repository", "string": "acme/web"}]))
    identity = ready(cluster, name)
    status = identity["status"]
    token = stored_token(cluster, name)
    issuer_status = get_json(cluster, "identityissuer", ISSUER)["status"]
    ca = str(operator.ca)

    def json_status() -> dict | None:
        shown = json.loads(ok(kubectl_fedid(cluster, plugin_path, "status", f"fid/{name}", "-n", TEAM,
                                            "-o", "json", "--ca-file", ca)))
        # The Issued Event is published right after the status write.
        return shown if any(event["reason"] == "Issued" for event in shown["events"]) else None

    shown = wait_for("the Issued Event in the plugin's status", json_status, timeout=30)
    assert shown["kind"] == "FederatedIdentity"
    assert (shown["namespace"], shown["name"]) == (TEAM, name)
    assert shown["issuer"] == ISSUER
    assert shown["keyID"] == status["keyID"] == issuer_status["activeKeyID"]
    assert shown["secretName"] == f"{name}-token"
    for key in ("issuedAt", "expiresAt", "renewAt"):
        assert timestamp(shown[key]) == timestamp(status[key]), key
    [ready_condition] = [c for c in shown["conditions"] if c["type"] == "Ready"]
    assert (ready_condition["status"], ready_condition["reason"]) == ("True", "Issued")
    assert ready_condition["message"] == condition(identity)["message"]
    assert ready_condition["lastTransitionTime"]
    claims = claims_of(token)
    assert shown["token"]["source"] == "secret"
    assert shown["token"]["claims"] == claims
    assert shown["token"]["claims"]["repository"] == "acme/web"
    assert shown["token"]["header"]["kid"] == status["keyID"]
    assert shown["verification"]["result"] == "verified", shown["verification"]
    assert shown["verification"]["jwksURL"] == issuer_status["jwksURL"]
    issued = [event for event in shown["events"] if event["reason"] == "Issued"]
    assert issued[0]["type"] == "Normal" and f"{name}-token" in issued[0]["message"]

    table = ok(kubectl_fedid(cluster, plugin_path, "status", f"fid/{name}", "-n", TEAM, "-o", "table",
                             "--ca-file", ca))
    assert table.startswith(f"FederatedIdentity {TEAM}/{name}\n"), table
    assert field(table, "Issuer") == ISSUER
    assert field(table, "Key ID") == status["keyID"]
    assert field(table, "Secret") == f"{name}-token"
    assert field(table, "Issued").startswith(status["issuedAt"]) and field(table, "Issued").endswith("ago)")
    assert field(table, "Expires").startswith(status["expiresAt"])
    assert field(table, "Renews").startswith(status["renewAt"])
    assert field(table, "Read from") == f"Secret {name}-token, key token"
    assert field(table, "Verification") == f"verified against {issuer_status['jwksURL']}"
    assert field(table, "jti") == claims["jti"] and field(table, "repository") == "acme/web"
    assert field(table, "Header").startswith("alg=RS256 kid=")
    for expected in ("\nConditions:\n  TYPE ", "  Ready ", " True ", " Issued ", "\nToken:\n", "\nEvents:\n"):
        assert expected in table, f"{expected!r} missing from:\n{table}"

    yaml = ok(kubectl_fedid(cluster, plugin_path, "status", f"federatedidentity/{name}", "--namespace", TEAM,
                            "-o", "yaml", "--ca-file", ca))
    for expected in ("kind: FederatedIdentity", f"keyID: {status['keyID']}", f"secretName: {name}-token",
                     "result: verified", f"jti: {claims['jti']}"):
        assert expected in yaml, f"{expected!r} missing from:\n{yaml}"

    # Without the issuer's private CA the JWKS cannot be fetched: reported, not fatal.
    unchecked = json.loads(ok(kubectl_fedid(cluster, plugin_path, "status", name, "-n", TEAM, "-o", "json")))
    assert unchecked["verification"]["result"] == "notChecked"
    assert "failed to download the JWKS" in unchecked["verification"]["detail"]
    assert "not checked: failed to download the JWKS" in ok(kubectl_fedid(cluster, plugin_path, "status", name,
                                                                          "-n", TEAM))

    # The token itself (or its signature) is never shown.
    for output in (table, yaml, json.dumps(shown), json.dumps(unchecked)):
        assert token not in output and token.rsplit(".", 1)[1] not in output
        assert not jwts_in(output)

    # `fedid plugin ...` is the same command.
    same = json.loads(ok(subprocess.run(
        [str(fedid_binary()), "plugin", "status", f"fid/{name}", "-n", TEAM, "-o", "json", "--ca-file", ca],
        capture_output=True, text=True, env=cluster.env(), timeout=60)))
    assert same["keyID"] == shown["keyID"] and same["verification"]["result"] == "verified"


def test_status_of_an_issuer(cluster: Cluster, operator: Operator, plugin_path: str) -> None:
    status = get_json(cluster, "identityissuer", ISSUER)["status"]
    shown = json.loads(ok(kubectl_fedid(cluster, plugin_path, "status", f"issuer/{ISSUER}", "-o", "json")))
    assert shown["kind"] == "IdentityIssuer" and shown["name"] == ISSUER
    assert shown["issuerURL"] == operator.issuer_url(ISSUER)
    assert shown["activeKeyID"] == status["activeKeyID"]
    assert shown["publishedKeyIDs"] == status["publishedKeyIDs"]
    assert shown["discoveryURL"] == status["discoveryURL"]
    assert shown["jwksURL"] == status["jwksURL"]
    assert timestamp(shown["nextRotationTime"]) == timestamp(status["nextRotationTime"])
    assert shown["default"] is False
    [ready_condition] = shown["conditions"]
    assert ready_condition["reason"] == "KeysReady"
    assert "KeyCreated" in {event["reason"] for event in shown["events"]}

    table = ok(kubectl_fedid(cluster, plugin_path, "status", f"identityissuer/{ISSUER}"))
    assert table.startswith(f"IdentityIssuer {ISSUER}\n"), table
    assert field(table, "Issuer URL") == operator.issuer_url(ISSUER)
    assert field(table, "Active key") == status["activeKeyID"]
    assert f"{status['activeKeyID']} (signing)" in field(table, "Published keys")
    assert field(table, "Next rotation").startswith(status["nextRotationTime"])
    assert field(table, "Discovery") == status["discoveryURL"]
    assert field(table, "JWKS") == status["jwksURL"]
    for expected in (" KeysReady ", " KeyCreated "):
        assert expected in table, f"{expected!r} missing from:\n{table}"


def test_renew_gives_a_new_token_and_waits_for_it(cluster: Cluster, operator: Operator, plugin_path: str) -> None:
    name = "renewed"
    cluster.apply(identity_manifest(name))
    before = ready(cluster, name)["status"]
    old = claims_of(stored_token(cluster, name))

    started = time.time()
    printed = ok(kubectl_fedid(cluster, plugin_path, "renew", f"fid/{name}", "-n", TEAM))
    # It returns only once the new token is in the status.
    after = get_json(cluster, "fid", name, "-n", TEAM)
    annotation = after["metadata"]["annotations"]["fedid.dev/renew-requested-at"]
    assert timestamp(after["status"]["issuedAt"]) >= timestamp(annotation) > started - 1
    assert f"fid/{name}: renewal requested at {annotation}" in printed
    assert f"expires at {after['status']['expiresAt']}" in printed, printed
    new_token = stored_token(cluster, name)
    new = claims_of(new_token)
    assert new["jti"] != old["jti"] and new["iat"] >= timestamp(annotation)
    assert after["status"]["issuedAt"] != before["issuedAt"]
    verify_token(operator, new_token, operator.issuer_url(ISSUER), "vault")
    assert after["metadata"]["generation"] == 1, "a renew request is metadata only"

    # Right after, again, without waiting: a second new token still comes.
    ok(kubectl_fedid(cluster, plugin_path, "renew", name, "-n", TEAM, "--wait=false"))
    third = wait_for("a third token", lambda: (t if (t := stored_token(cluster, name)) != new_token else None),
                     timeout=30)
    assert claims_of(third)["jti"] not in (old["jti"], new["jti"])
    ok(kubectl_fedid(cluster, plugin_path, "renew", name, "-n", TEAM, "--wait", "--timeout", "30s"))
    assert stored_token(cluster, name) != third


def test_renew_exchanges_again(cluster: Cluster, operator: Operator, plugin_path: str,
                               service: tuple[Recorder, str]) -> None:
    recorder, ca = service
    name = "exchanged"
    cluster.apply(exchanging_manifest(name, ca, f"{recorder.url}/allowed/token"))
    ready(cluster, name)
    first_credentials = secret_data(cluster, TEAM, f"{name}-token")["decoded"]["access-token"]
    shown = json.loads(ok(kubectl_fedid(cluster, plugin_path, "status", f"fid/{name}", "-n", TEAM, "-o", "json")))
    assert shown["lastExchange"]["endpointHost"] == f"127.0.0.1:{recorder.port}"
    assert shown["lastExchange"]["outcome"] == "Exchanged"
    assert shown["credentialsExpireAt"]
    assert {c["type"] for c in shown["conditions"]} == {"Ready", "CredentialsFresh"}
    assert first_credentials not in json.dumps(shown)

    printed = ok(kubectl_fedid(cluster, plugin_path, "renew", f"fid/{name}", "-n", TEAM))
    assert "credentials expire at" in printed
    renewed = secret_data(cluster, TEAM, f"{name}-token")["decoded"]["access-token"]
    assert renewed != first_credentials, "the renewal exchanged the new token again"


def test_a_failing_exchange_is_shown_and_renew_times_out_with_the_reason(
    cluster: Cluster, operator: Operator, plugin_path: str, service: tuple[Recorder, str]
) -> None:
    recorder, ca = service
    name = "rejected"
    cluster.apply(exchanging_manifest(name, ca, f"{recorder.url}/allowed/reject"))

    def rejected() -> dict | None:
        shown = json.loads(ok(kubectl_fedid(cluster, plugin_path, "status", f"fid/{name}", "-n", TEAM, "-o", "json")))
        return shown if (shown.get("lastExchange") or {}).get("outcome") == "ExchangeRejected" else None

    shown = wait_for("the rejected exchange in the status", rejected, timeout=60)
    assert shown["lastExchange"]["upstreamCode"] == "invalid_grant"
    assert shown["lastExchange"]["nextAttemptAt"]
    assert shown["token"]["unavailable"] and shown["verification"]["result"] == "notChecked"
    table = ok(kubectl_fedid(cluster, plugin_path, "status", f"fid/{name}", "-n", TEAM))
    assert "\nLast exchange:\n" in table, table
    assert field(table, "Host") == f"127.0.0.1:{recorder.port}"
    assert field(table, "Outcome") == "ExchangeRejected"
    assert field(table, "Upstream code") == "invalid_grant"
    assert field(table, "Next attempt").startswith(shown["lastExchange"]["nextAttemptAt"][:16])

    fails(kubectl_fedid(cluster, plugin_path, "renew", f"fid/{name}", "-n", TEAM, "--timeout", "3s"),
          f"fid/{name} was not renewed within 3s: Ready is")
    fails(kubectl_fedid(cluster, plugin_path, "token", name, "-n", TEAM), f"fid/{name} has no Secret yet")


def test_rotate_publishes_a_new_key_that_takes_over(cluster: Cluster, operator: Operator, plugin_path: str) -> None:
    old_kid = get_json(cluster, "identityissuer", ISSUER)["status"]["activeKeyID"]
    printed = ok(kubectl_fedid(cluster, plugin_path, "rotate", f"issuer/{ISSUER}"))
    assert f"issuer/{ISSUER}: key rotation requested" in printed
    line = next(line for line in printed.splitlines() if "new key" in line)
    new_kid = line.split("new key ", 1)[1].split(" ", 1)[0]
    assert new_kid != old_kid
    assert f"tokens signed by key {old_kid} keep verifying" in line, line
    annotations = get_json(cluster, "identityissuer", ISSUER)["metadata"]["annotations"]
    assert annotations["fedid.dev/rotate-keys"] in printed

    # The 2 s prepublish period passes, then it signs; the old key stays published.
    wait_for("the new key to sign", lambda: get_json(cluster, "identityissuer", ISSUER)["status"]["activeKeyID"] == new_kid,
             timeout=30)
    shown = json.loads(ok(kubectl_fedid(cluster, plugin_path, "status", f"issuer/{ISSUER}", "-o", "json")))
    assert shown["activeKeyID"] == new_kid and {old_kid, new_kid} <= set(shown["publishedKeyIDs"])
    assert shown["pendingKeyIDs"] == []

    # Without waiting: the request is made and the command returns.
    requested = ok(kubectl_fedid(cluster, plugin_path, "rotate", ISSUER, "--wait=false"))
    assert "key rotation requested" in requested and "new key" not in requested
    wait_for("a third key", lambda: len(get_json(cluster, "identityissuer", ISSUER)["status"]["publishedKeyIDs"]) >= 3,
             timeout=30)


def test_token_prints_the_jwt_or_its_claims(cluster: Cluster, operator: Operator, plugin_path: str) -> None:
    name = "printed"
    cluster.apply(identity_manifest(name))
    ready(cluster, name)
    token = ok(kubectl_fedid(cluster, plugin_path, "token", name, "-n", TEAM)).strip()
    assert token == stored_token(cluster, name)
    claims = verify_token(operator, token, operator.issuer_url(ISSUER), "sts.example.com")
    assert claims["identity"] == name and claims["namespace"] == TEAM

    decoded = kubectl_fedid(cluster, plugin_path, "token", f"fid/{name}", "-n", TEAM, "--decode")
    report = json.loads(ok(decoded))
    assert report["claims"] == claims and report["header"]["kid"] == jwt.get_unverified_header(token)["kid"]
    assert report["verified"] is False and "NOT verified" in decoded.stderr
    assert not jwts_in(decoded.stdout)


def test_token_refuses_an_identity_whose_secret_holds_no_token(
    cluster: Cluster, operator: Operator, plugin_path: str, service: tuple[Recorder, str]
) -> None:
    recorder, ca = service
    name = "credentials-only"
    cluster.apply(exchanging_manifest(name, ca, f"{recorder.url}/allowed/token",
                                      output={"includeSubjectToken": False}))
    ready(cluster, name)
    fails(kubectl_fedid(cluster, plugin_path, "token", name, "-n", TEAM),
          f"holds no token: fid/{name} has output.includeSubjectToken: false")
    # Status still shows the claims, from the unsigned copy, and says why it is not verified.
    shown = json.loads(ok(kubectl_fedid(cluster, plugin_path, "status", f"fid/{name}", "-n", TEAM, "-o", "json")))
    assert shown["token"]["source"] == "unsigned-token"
    assert shown["token"]["claims"]["identity"] == name
    assert shown["verification"]["result"] == "notChecked"
    assert "output.includeSubjectToken: false" in shown["verification"]["detail"]


def test_errors_are_one_line_and_exit_1(cluster: Cluster, operator: Operator, plugin_path: str,
                                        tmp_path: Path) -> None:
    fails(kubectl_fedid(cluster, plugin_path, "status", "fid/missing", "-n", TEAM),
          f"FederatedIdentity {TEAM}/missing not found")
    fails(kubectl_fedid(cluster, plugin_path, "status", "issuer/missing"), "IdentityIssuer missing not found")
    fails(kubectl_fedid(cluster, plugin_path, "token", "missing", "-n", TEAM), "not found")
    fails(kubectl_fedid(cluster, plugin_path, "status", "pod/web", "-n", TEAM), 'unknown kind "pod"')
    fails(kubectl_fedid(cluster, plugin_path, "renew", f"issuer/{ISSUER}"), "renew works on FederatedIdentities")
    fails(kubectl_fedid(cluster, plugin_path, "rotate", "fid/web", "-n", TEAM), "rotate works on IdentityIssuers")
    fails(kubectl_fedid(cluster, plugin_path, "token", f"issuer/{ISSUER}"), "token works on FederatedIdentities")
    fails(kubectl_fedid(cluster, plugin_path, "status", "fid/web", "--kubeconfig", str(tmp_path / "none")),
          "cannot read the kubeconfig")
    fails(kubectl_fedid(cluster, plugin_path, "status", "fid/web", env={"KUBECONFIG": str(tmp_path / "none")}),
          "no usable kubeconfig")

    # A ServiceAccount without rights is forbidden.
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", TEAM)
    token = cluster.kubectl("create", "token", "nobody", "-n", TEAM).stdout.strip()
    server = cluster.kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}").stdout
    nobody = tmp_path / "nobody.kubeconfig"
    nobody.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": str(cluster.ca_file)}}],
        "users": [{"name": "nobody", "user": {"token": token}}],
        "contexts": [{"name": "nobody", "context": {"cluster": "e2e", "user": "nobody", "namespace": TEAM}}],
        "current-context": "nobody",
    }))
    fails(kubectl_fedid(cluster, plugin_path, "status", "fid/web", "--kubeconfig", str(nobody)), "forbidden")
    fails(kubectl_fedid(cluster, plugin_path, "renew", "fid/web", "--kubeconfig", str(nobody)), "forbidden")


def test_the_namespace_comes_from_the_context(cluster: Cluster, operator: Operator, plugin_path: str,
                                              tmp_path: Path) -> None:
    cluster.apply(identity_manifest("context"))
    ready(cluster, "context")
    config = json.loads(cluster.kubectl("config", "view", "--raw", "--flatten", "-o", "json").stdout)
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    config["contexts"].append({"name": "team", "context": {**current["context"], "namespace": TEAM}})
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    with_context = json.loads(ok(kubectl_fedid(cluster, plugin_path, "status", "fid/context", "-o", "json",
                                               "--kubeconfig", str(path), "--context", "team")))
    assert (with_context["namespace"], with_context["name"]) == (TEAM, "context")
    # The current context has no namespace: `default`.
    fails(kubectl_fedid(cluster, plugin_path, "status", "fid/context", "--kubeconfig", str(path)),
          "FederatedIdentity default/context not found")
    fails(kubectl_fedid(cluster, plugin_path, "status", "fid/context", "--kubeconfig", str(path), "--context", "nope"),
          "the kubeconfig cannot be used")
