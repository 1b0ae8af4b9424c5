"""Token exchange, end to end: `fedid run` (as the chart's ServiceAccount) trades identities' tokens
at an HTTPS token service on loopback and keeps the credentials fresh in their Secrets.

This file covers what every kind shares, against a scripted service that records each request
(`peers/recorder.py`): the wire of an RFC 8693 exchange, the issuer's endpoint policy, the
client-credentials label, refresh at the credentials' real expiry, failure classes with backoff and
kept credentials, and the per-host request budget; and the wire of the kinds whose services have no
local build (Entra ID, Google's STS and IAM Credentials, the latter read back by the real
google-auth). The real peers are in `test_exchange_peers.py` (Dex, MinIO),
`test_exchange_openbao.py` and `test_exchange_keycloak.py`.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Iterator

import google.auth
import google.auth.transport.requests
import jwt
import pytest
import requests

from conftest import Cluster, wait_for
from fedid_harness import (
    Operator,
    chart_operator,
    condition,
    events_for,
    get_json,
    jwks_for,
    secret_data,
    verify_token,
    wait_for_reason,
    write_serving_certificate,
)
from peers.recorder import Recorded, Recorder, Reply

RUN = uuid.uuid4().hex[:6]
TEAM = f"exchange-{RUN}"
ISSUER = f"exchange-{RUN}"
QPS, BURST, IN_FLIGHT = 4, 2, 2


class Script:
    """The token service's behaviour, switchable per test."""

    def __init__(self) -> None:
        self.handler = lambda _: Reply(200, {"access_token": "at-0", "token_type": "Bearer", "expires_in": 600})

    def __call__(self, seen: Recorded) -> Reply:
        return self.handler(seen)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorder, Script, str]]:
    directory = tmp_path_factory.mktemp("token-service")
    ca, cert, key = write_serving_certificate(directory)
    script = Script()
    with Recorder(cert, key, handler=script) as recorder:
        yield recorder, script, ca.read_text()


@pytest.fixture(scope="module")
def operator(cluster: Cluster, service: tuple[Recorder, Script, str]) -> Iterator[Operator]:
    recorder, _, _ = service
    budget = ["--exchange-qps", str(QPS), "--exchange-burst", str(BURST), "--exchange-concurrency", str(IN_FLIGHT)]
    with chart_operator(cluster, "fedid-exchange", [TEAM], budget) as running:
        issuer = {
            "apiVersion": "fedid.dev/v1alpha1",
            "kind": "IdentityIssuer",
            "metadata": {"name": ISSUER},
            "spec": {
                "issuerURL": running.issuer_url(ISSUER),
                "signing": {"prepublishPeriod": "0s"},
                "allowedNamespaces": {"names": [TEAM]},
                "exchange": {"allowedEndpoints": [f"{recorder.url}/allowed/"],
                             "privateKeyJWTClientIDs": ["ci-{namespace}"]},
            },
        }
        wait_for("the issuer to be accepted", lambda: cluster.apply(json.dumps(issuer)).returncode == 0)
        cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{ISSUER}", "--timeout=60s")
        yield running
    cluster.kubectl("delete", "identityissuer", ISSUER, "--wait=false", check=False)
    logs = running.logs()
    assert "at-" not in logs and "client-pass" not in logs, "credentials appeared in the logs"


def identity(name: str, ca: str, path: str = "/allowed/token", **oauth2: object) -> str:
    return json.dumps({
        "apiVersion": "fedid.dev/v1alpha1",
        "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {
            "issuerRef": ISSUER,
            "audiences": ["token-service"],
            "lifetime": "10m",
            "exchange": {"caBundle": ca, "timeout": "2s", "oauth2": {"tokenURL": path, **oauth2}},
        },
    })


def requests_for(recorder: Recorder, name: str) -> list[Recorded]:
    """Requests whose subject token belongs to identity `name` (by its `identity` claim)."""
    found = []
    for seen in list(recorder.requests):
        token = seen.form.get("subject_token", "")
        try:
            payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        except (IndexError, ValueError):
            continue
        if payload.get("identity") == name:
            found.append(seen)
    return found


def fresh(identity_object: dict) -> dict | None:
    return condition(identity_object, "CredentialsFresh")


def test_an_rfc8693_exchange_writes_the_credentials_and_refreshes_at_their_real_expiry(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str]
) -> None:
    recorder, script, ca = service
    counter = iter(range(1, 1000))
    script.handler = lambda _: Reply(200, {
        "access_token": f"at-{next(counter)}", "token_type": "Bearer", "expires_in": 45,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
    })
    name = "wire"
    cluster.apply(identity(name, ca, f"{recorder.url}/allowed/token", audience="api", scopes=["read", "write"],
                           resource="https://api.example.com", extraParameters={"connector_id": "fedid"}))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    first = requests_for(recorder, name)[0]
    form = first.form
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert form["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert (form["audience"], form["scope"], form["resource"], form["connector_id"]) == (
        "api", "read write", "https://api.example.com", "fedid")
    assert "client_id" not in form and "authorization" not in first.headers
    assert first.headers["content-type"] == "application/x-www-form-urlencoded"
    claims = verify_token(operator, form["subject_token"], operator.issuer_url(ISSUER), "token-service")
    assert claims["namespace"] == TEAM and claims["identity"] == name

    secret = secret_data(cluster, TEAM, f"{name}-token")
    assert set(secret["decoded"]) == {"token", "expires-at", "access-token", "token-type", "issued-token-type"}
    assert secret["decoded"]["token"] == form["subject_token"]
    assert secret["decoded"]["token-type"] == "Bearer"
    status = get_json(cluster, "fid", name, "-n", TEAM)["status"]
    assert status["credentialsExpireAt"] == secret["decoded"]["expires-at"]
    assert status["lastExchange"]["outcome"] == "Exchanged"
    assert status["lastExchange"]["endpointHost"] == f"127.0.0.1:{recorder.port}"
    assert fresh(get_json(cluster, "fid", name, "-n", TEAM))["status"] == "True"
    printed = cluster.kubectl("get", "fid", name, "-n", TEAM).stdout
    assert "CREDENTIALS EXPIRE" in printed and status["credentialsExpireAt"] in printed

    # The credentials last 45 s (the token 10 min): renewed at 2/3 of 45 s ±10%, never later than
    # 5 s before they expire, with a fresh subject token each time, one Secret write per refresh.
    first_value = secret["decoded"]["access-token"]
    version = secret["metadata"]["resourceVersion"]
    refreshed = wait_for("the credentials to be refreshed", lambda: (
        s if (s := secret_data(cluster, TEAM, f"{name}-token"))["decoded"]["access-token"] != first_value else None),
        timeout=60)
    seen = requests_for(recorder, name)
    assert len(seen) == 2, [r.at for r in seen]
    assert 26 <= seen[1].at - seen[0].at <= 40, seen[1].at - seen[0].at
    assert seen[1].form["subject_token"] != seen[0].form["subject_token"]
    assert int(refreshed["metadata"]["resourceVersion"]) > int(version)
    cluster.kubectl("delete", "fid", name, "-n", TEAM)


def test_an_endpoint_the_issuer_does_not_allow_is_never_contacted(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str]
) -> None:
    recorder, _, ca = service
    before = recorder.count()
    for name, url in (("elsewhere", f"{recorder.url}/other/token"), ("lookalike", f"{recorder.url}/allowedx")):
        cluster.apply(identity(name, ca, url))
        found = wait_for_reason(cluster, TEAM, name, "EndpointNotAllowed")
        assert condition(found)["status"] == "False"
        assert "spec.exchange.allowedEndpoints" in condition(found)["message"]
    time.sleep(2)  # give a wrong implementation the chance to send
    assert recorder.count() == before, "fedid contacted an endpoint its issuer does not allow"
    assert not any(True for _ in secret_names(cluster, "elsewhere-token", "lookalike-token"))
    for name in ("elsewhere", "lookalike"):
        cluster.kubectl("delete", "fid", name, "-n", TEAM)


def secret_names(cluster: Cluster, *names: str) -> list[str]:
    items = get_json(cluster, "secrets", "-n", TEAM)["items"]
    return [item["metadata"]["name"] for item in items if item["metadata"]["name"] in names]


def test_only_labelled_client_secrets_are_sent(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str]
) -> None:
    recorder, script, ca = service
    script.handler = lambda _: Reply(200, {"access_token": "at-c", "token_type": "Bearer", "expires_in": 600})
    cluster.kubectl("create", "secret", "generic", "oauth-client", "-n", TEAM, "--from-literal=client-secret=client-pass")
    name = "confidential"
    cluster.apply(identity(name, ca, f"{recorder.url}/allowed/token",
                           clientAuth={"clientID": "fedid ci", "clientSecret": {"secretRef": {"name": "oauth-client"}}}))
    found = wait_for_reason(cluster, TEAM, name, "ClientSecretNotAllowed")
    assert "fedid.dev/client-credentials" in condition(found)["message"]
    time.sleep(2)
    assert requests_for(recorder, name) == [], "an unlabelled Secret's value was sent"

    # The owner labels the Secret: the watch brings the identity back at once.
    cluster.kubectl("label", "secret", "oauth-client", "-n", TEAM, "fedid.dev/client-credentials=true")
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=30s")
    [sent] = requests_for(recorder, name)
    expected = base64.b64encode(b"fedid+ci:client-pass").decode()
    assert sent.headers["authorization"] == f"Basic {expected}"

    # A missing key is reported by its own reason.
    cluster.kubectl("delete", "fid", name, "-n", TEAM)
    cluster.apply(identity("wrong-key", ca, f"{recorder.url}/allowed/token", clientAuth={
        "clientID": "x", "clientSecret": {"secretRef": {"name": "oauth-client", "key": "nope"}, "method": "post"}}))
    wait_for_reason(cluster, TEAM, "wrong-key", "ClientSecretKeyMissing")
    cluster.kubectl("delete", "fid", "wrong-key", "-n", TEAM)


def test_private_key_jwt_signs_a_client_assertion_only_for_the_namespaces_client(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str]
) -> None:
    recorder, script, ca = service
    script.handler = lambda _: Reply(200, {"access_token": "at-pkjwt", "token_type": "Bearer", "expires_in": 600})
    token_url = f"{recorder.url}/allowed/token"
    # The issuer lets namespace TEAM authenticate as `ci-<namespace>` only.
    cluster.apply(identity("other-client", ca, token_url, clientAuth={"clientID": "ci-elsewhere", "privateKeyJWT": {}}))
    found = wait_for_reason(cluster, TEAM, "other-client", "ClientIDNotAllowed")
    assert "privateKeyJWTClientIDs" in condition(found)["message"]
    assert condition(found)["status"] == "False"

    name = "assertion"
    client_id = f"ci-{TEAM}"
    cluster.apply(identity(name, ca, token_url, clientAuth={"clientID": client_id, "privateKeyJWT": {}}))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    assert requests_for(recorder, "other-client") == [], "an assertion for a client the issuer forbids was sent"
    [sent] = requests_for(recorder, name)
    form = sent.form
    assert "authorization" not in sent.headers and "client_secret" not in form
    assert form["client_id"] == client_id
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    # The assertion verifies against the issuer's served JWKS, names the client as iss and sub
    # (RFC 7523 §3), is for the token endpoint, lives a minute, and is not the subject token.
    jwks = jwks_for(operator, operator.issuer_url(ISSUER))
    keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(jwks).keys}
    header = jwt.get_unverified_header(form["client_assertion"])
    assertion = jwt.decode(form["client_assertion"], keys[header["kid"]].key, algorithms=[header["alg"]],
                           audience=token_url, issuer=client_id,
                           options={"require": ["exp", "iat", "iss", "sub", "aud", "jti"]})
    assert assertion["sub"] == client_id
    assert assertion["exp"] - assertion["iat"] == 60
    subject = verify_token(operator, form["subject_token"], operator.issuer_url(ISSUER), "token-service")
    assert assertion["jti"] != subject["jti"]
    assert secret_data(cluster, TEAM, f"{name}-token")["decoded"]["access-token"] == "at-pkjwt"

    # An explicit audience replaces the token endpoint (servers such as Keycloak accept their issuer).
    cluster.apply(identity(name, ca, token_url, clientAuth={
        "clientID": client_id, "privateKeyJWT": {"audience": "https://realm.example"}}))
    second = wait_for("a second exchange after the spec change", lambda: (
        seen[1] if len(seen := requests_for(recorder, name)) > 1 else None), timeout=30)
    assert jwt.decode(second.form["client_assertion"], options={"verify_signature": False})["aud"] == "https://realm.example"
    for gone in (name, "other-client"):
        cluster.kubectl("delete", "fid", gone, "-n", TEAM)


def test_a_client_assertion_is_signed_when_the_budget_lets_it_go_not_when_queued(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str]
) -> None:
    recorder, script, ca = service
    script.handler = lambda _: Reply(200, {"access_token": "at-queued", "token_type": "Bearer", "expires_in": 600})
    names = [f"queued-{n}" for n in range(12)]
    token_url = f"{recorder.url}/allowed/token"
    cluster.apply("\n---\n".join(identity(name, ca, token_url, clientAuth={"clientID": f"ci-{TEAM}", "privateKeyJWT": {}})
                                  for name in names))
    for name in names:
        cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    queued, aged = [], []
    for name in names:
        [sent] = requests_for(recorder, name)
        subject = jwt.decode(sent.form["subject_token"], options={"verify_signature": False})
        assertion = jwt.decode(sent.form["client_assertion"], options={"verify_signature": False})
        queued.append(sent.at - subject["iat"])
        aged.append(sent.at - assertion["iat"])
    # 12 requests at 4/s after a burst of 2: the last tokens waited 2.5 s or more for the budget,
    # yet every 60-second assertion was signed just before its request left.
    assert max(queued) >= 2.0, queued
    assert max(aged) < 1.5, aged
    for name in names:
        cluster.kubectl("delete", "fid", name, "-n", TEAM, "--wait=false")


def test_failures_keep_valid_credentials_back_off_and_recover(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str]
) -> None:
    recorder, script, ca = service
    name = "flaky"
    script.handler = lambda _: Reply(200, {"access_token": "at-good", "token_type": "Bearer", "expires_in": 40})
    cluster.apply(identity(name, ca, f"{recorder.url}/allowed/token"))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    good = secret_data(cluster, TEAM, f"{name}-token")

    # The service fails from now on: the refresh (at ~27 s) fails, the Secret keeps the credentials,
    # Ready stays True and CredentialsFresh says why, with the upstream code.
    script.handler = lambda _: Reply(503, {"error": "temporarily_unavailable"})
    failing = wait_for("CredentialsFresh=False", lambda: (
        i if (f := fresh(i := get_json(cluster, "fid", name, "-n", TEAM))) and f["status"] == "False" else None),
        timeout=60)
    assert fresh(failing)["reason"] == "ExchangeUnavailable"
    assert condition(failing)["status"] == "True", "valid credentials must keep the identity Ready"
    assert failing["status"]["lastExchange"]["upstreamCode"] == "temporarily_unavailable"
    assert secret_data(cluster, TEAM, f"{name}-token")["decoded"] == good["decoded"]
    failed_at = time.time()
    warnings = [e for e in events_for(cluster, TEAM, name) if e.get("reason") == "ExchangeUnavailable"]
    assert warnings and "temporarily_unavailable" in warnings[0].get("note", warnings[0].get("message", ""))

    # Backoff, no hot loop: 5 s doubling; in 12 s at most 3 more requests (5 s, 10 s apart).
    start = len(requests_for(recorder, name))
    time.sleep(12)
    assert len(requests_for(recorder, name)) - start <= 3

    # A refusal is a different class, also without losing the credentials while they are valid.
    script.handler = lambda _: Reply(400, {"error": "invalid_grant", "error_description": "nope"})
    rejected = wait_for("ExchangeRejected", lambda: (
        i if (f := fresh(i := get_json(cluster, "fid", name, "-n", TEAM))) and f["reason"] == "ExchangeRejected"
        else None), timeout=40)
    assert "invalid_grant" in fresh(rejected)["message"] and "nope" not in fresh(rejected)["message"]

    # Once the credentials have expired, Ready says so, with the exchange's reason.
    expired = wait_for_reason(cluster, TEAM, name, "ExchangeRejected", timeout=60)
    assert condition(expired)["status"] == "Unknown"

    # Recovery within one backoff interval (at most 5 min cap; here the interval is < 45 s).
    script.handler = lambda _: Reply(200, {"access_token": "at-back", "token_type": "Bearer", "expires_in": 600})
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=90s")
    recovered = get_json(cluster, "fid", name, "-n", TEAM)
    assert fresh(recovered)["status"] == "True" and recovered["status"].get("failedAttempts", 0) == 0
    assert secret_data(cluster, TEAM, f"{name}-token")["decoded"]["access-token"] == "at-back"
    assert time.time() - failed_at < 200
    cluster.kubectl("delete", "fid", name, "-n", TEAM)


@pytest.mark.parametrize(
    "reply,reason",
    [
        (Reply(429, {"error": "slow_down"}, {"Retry-After": "30"}), "ExchangeUnavailable"),
        (Reply(200, "not json"), "ExchangeMalformed"),
        (Reply(302, b"", {"Location": "https://127.0.0.1:1/elsewhere"}), "ExchangeMalformed"),
        (Reply(200, {"access_token": "x", "token_type": "Bearer"}, delay=4), "ExchangeUnavailable"),
    ],
    ids=["throttled", "malformed", "redirect", "timeout"],
)
def test_a_first_exchange_failure_is_reported_with_its_class(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str], reply: Reply, reason: str
) -> None:
    recorder, script, ca = service
    script.handler = lambda _: reply
    name = f"first-{reason.lower()}-{uuid.uuid4().hex[:4]}"
    cluster.apply(identity(name, ca, f"{recorder.url}/allowed/token"))
    found = wait_for_reason(cluster, TEAM, name, reason, timeout=60)
    assert condition(found)["status"] in ("False", "Unknown")
    assert fresh(found)["reason"] == reason
    assert secret_names(cluster, f"{name}-token") == [], "nothing is written without credentials"
    if reply.headers.get("Retry-After"):
        # Retry-After: 30 is honoured: no second request within it.
        time.sleep(8)
        assert len(requests_for(recorder, name)) == 1, [(r.at - time.time()) for r in requests_for(recorder, name)]
    cluster.kubectl("delete", "fid", name, "-n", TEAM)


def test_the_request_budget_holds_at_the_service_and_every_identity_is_issued(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str]
) -> None:
    recorder, script, ca = service
    script.handler = lambda _: Reply(200, {"access_token": "at-b", "token_type": "Bearer", "expires_in": 600})
    names = [f"budget-{n}" for n in range(16)]
    before = recorder.count()
    manifest = "\n---\n".join(identity(name, ca, f"{recorder.url}/allowed/token") for name in names)
    cluster.apply(manifest)
    for name in names:
        cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    times = sorted(seen.at for seen in recorder.requests[before:])
    assert len(times) >= len(names)
    # --exchange-qps 4 --exchange-burst 2: any 1 s window holds at most burst + qps requests, and
    # 16 requests need at least (16 - 2) / 4 = 3.5 s.
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= BURST + QPS, busiest
    assert times[-1] - times[0] >= 3.0, times[-1] - times[0]
    assert operator.metric("fedid_exchange_budget_waits_total") > 0
    assert operator.metric("fedid_exchange_requests_total", {"kind": "oauth2", "outcome": "Exchanged"}) >= len(names)
    for name in names:
        cluster.kubectl("delete", "fid", name, "-n", TEAM, "--wait=false")


def test_a_host_never_has_more_requests_in_flight_than_exchange_concurrency(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str]
) -> None:
    recorder, script, ca = service
    # Each reply takes 1 s: with --exchange-concurrency 2 a third request can start only when one
    # of the first two is answered, although the rate (4/s, burst 2) would let five go in 0.9 s.
    script.handler = lambda _: Reply(200, {"access_token": "at-slow", "token_type": "Bearer", "expires_in": 600},
                                     delay=1.0)
    names = [f"in-flight-{n}" for n in range(6)]
    before = recorder.count()
    cluster.apply("\n---\n".join(identity(name, ca, f"{recorder.url}/allowed/token") for name in names))
    for name in names:
        cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    arrivals = sorted(seen.at for seen in recorder.requests[before:])
    assert len(arrivals) == len(names)
    busiest = max(sum(1 for t in arrivals if start <= t < start + 0.9) for start in arrivals)
    assert busiest <= IN_FLIGHT, (busiest, [round(t - arrivals[0], 2) for t in arrivals])
    for name in names:
        cluster.kubectl("delete", "fid", name, "-n", TEAM, "--wait=false")


@pytest.mark.parametrize(
    "exchange,message",
    [
        ({}, "exactly one of oauth2, vault, aws"),
        ({"oauth2": {"tokenURL": "https://a.example/t"}, "vault": {"address": "https://v.example", "role": "r"}},
         "exactly one of oauth2, vault, aws"),
        ({"oauth2": {"tokenURL": "http://a.example/t"}}, "tokenURL must be an https URL"),
        ({"oauth2": {"tokenURL": "https://a.example/t", "extraParameters": {"subject_token": "x"}}},
         "extraParameters must not set a parameter fedid sets itself"),
        ({"aws": {"roleARN": "arn:aws:iam::1:role/ci-role", "durationSeconds": 60}}, "durationSeconds"),
        ({"aws": {"roleARN": "role/ci-role-not-an-arn"}}, "roleARN must be an ARN"),
        ({"vault": {"address": "https://user:pw@v.example", "role": "r"}}, "address must be an https URL"),
        ({"vault": {"address": "https://v.example"}}, "role"),
        ({"vault": {"address": "https://v.example", "role": "r"}, "timeout": "5m"}, "timeout must be between 1s and 1m"),
        ({"vault": {"address": "https://v.example", "role": "r"}, "caBundle": "not pem"}, "caBundle must hold PEM"),
        ({"oauth2": {"tokenURL": "https://a.example/t", "clientAuth": {"clientID": "c"}}},
         "clientAuth must set exactly one of clientSecret, privateKeyJWT"),
        ({"oauth2": {"tokenURL": "https://a.example/t", "clientAuth": {
            "clientID": "c", "privateKeyJWT": {}, "clientSecret": {"secretRef": {"name": "s"}}}}},
         "clientAuth must set exactly one of clientSecret, privateKeyJWT"),
        ({"azure": {"tenantID": "a/b", "clientID": "c", "scope": "s"}}, "tenantID"),
        ({"azure": {"tenantID": "t", "clientID": "c"}}, "scope"),
        ({"azure": {"clientID": "c", "scope": "s"}}, "azure must set tenantID (or a whole tokenURL)"),
        ({"gcp": {"audience": "projects/1/providers/p"}}, "gcp.audience must be a provider resource name"),
        ({"vault": {"address": "https://v.example", "role": "r"}, "caBundle": "-----BEGIN CERTIFICATE-----",
          "caBundleRef": {"name": "ca"}}, "exchange must not set both caBundle and caBundleRef"),
        ({"gcp": {"audience": "//iam.googleapis.com/p", "impersonationURL": "https://iam.example/x"}},
         "gcp.impersonationURL needs serviceAccountEmail"),
        ({"gcp": {"audience": "//iam.googleapis.com/p", "tokenLifetimeSeconds": 1200}},
         "gcp.tokenLifetimeSeconds needs serviceAccountEmail"),
        ({"gcp": {"audience": "//iam.googleapis.com/p", "serviceAccountEmail": "ci@p.iam.gserviceaccount.com",
                  "tokenLifetimeSeconds": 60}}, "tokenLifetimeSeconds"),
        ({"gcp": {"audience": "//iam.googleapis.com/p", "serviceAccountEmail": "not-an-email"}},
         "serviceAccountEmail"),
        ({"gcp": {"audience": "//iam.googleapis.com/p"}, "vault": {"address": "https://v.example", "role": "r"}},
         "exchange must set exactly one of oauth2, vault, aws, azure, gcp"),
        ({"azure": {"tenantID": "t", "clientID": "c", "scope": "s", "tokenURL": "https://a.example/t",
                    "authorityHost": "https://b.example"}}, "azure must not set both tokenURL and authorityHost"),
        ({"azure": {"tenantID": "t", "clientID": "c", "scope": "s", "tokenURL": "http://a.example/t"}},
         "tokenURL must be an https URL"),
    ],
)
def test_invalid_exchange_specs_are_rejected_at_apply_time(
    cluster: Cluster, operator: Operator, exchange: dict, message: str
) -> None:
    manifest = json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": "invalid-exchange", "namespace": TEAM},
        "spec": {"audiences": ["a"], "exchange": exchange},
    })
    result = cluster.kubectl("apply", "-f", "-", input=manifest, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "spec.exchange" in result.stderr, result.stderr


def test_invalid_allowed_endpoints_are_rejected_at_apply_time(cluster: Cluster, operator: Operator) -> None:
    manifest = json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "IdentityIssuer", "metadata": {"name": f"bad-{RUN}"},
        "spec": {"issuerURL": "https://issuer.example.com", "exchange": {"allowedEndpoints": ["http://sts.example.com/"]}},
    })
    result = cluster.kubectl("apply", "-f", "-", input=manifest, check=False)
    assert result.returncode != 0
    assert "spec.exchange.allowedEndpoints[0]" in result.stderr, result.stderr


def test_removing_the_exchange_leaves_only_the_token(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str]
) -> None:
    recorder, script, ca = service
    script.handler = lambda _: Reply(200, {"access_token": "at-removed", "token_type": "Bearer", "expires_in": 600})
    name = "exchange-removed"
    manifest = json.loads(identity(name, ca, f"{recorder.url}/allowed/token"))
    cluster.apply(json.dumps(manifest))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    assert "access-token" in secret_data(cluster, TEAM, f"{name}-token")["decoded"]
    # The same identity without spec.exchange: one new token, and the exchange's keys and
    # annotations are gone from the Secret (server-side apply drops what fedid no longer sets).
    del manifest["spec"]["exchange"]
    cluster.kubectl("replace", "-f", "-", input=json.dumps(manifest))
    plain = wait_for("the exchange's keys to go", lambda: (
        s if set((s := secret_data(cluster, TEAM, f"{name}-token"))["decoded"]) == {"token", "expires-at"} else None),
        timeout=30)
    annotations = plain["metadata"].get("annotations", {})
    assert not {"fedid.dev/exchange-digest", "fedid.dev/credentials-expire-at"} & set(annotations), annotations
    status = get_json(cluster, "fid", name, "-n", TEAM)["status"]
    assert "credentialsExpireAt" not in status and condition({"status": status}, "CredentialsFresh") is None, status
    assert len(requests_for(recorder, name)) == 1
    verify_token(operator, plain["decoded"]["token"], operator.issuer_url(ISSUER), "token-service")
    cluster.kubectl("delete", "fid", name, "-n", TEAM)


def test_a_ca_bundle_from_a_labelled_configmap_is_trusted_and_no_other(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str]
) -> None:
    recorder, script, ca = service
    script.handler = lambda _: Reply(200, {"access_token": "at-cm", "token_type": "Bearer", "expires_in": 600})
    config_map = "token-service-ca"
    cluster.kubectl("create", "configmap", config_map, "-n", TEAM, f"--from-literal=bundle.pem={ca}")

    def with_ca_ref(name: str, reference: dict) -> str:
        manifest = json.loads(identity(name, ca, f"{recorder.url}/allowed/token"))
        del manifest["spec"]["exchange"]["caBundle"]
        manifest["spec"]["exchange"]["caBundleRef"] = reference
        return json.dumps(manifest)

    # Without fedid's label the ConfigMap is not even in fedid's cache: nothing is sent.
    name = "ca-from-configmap"
    cluster.apply(with_ca_ref(name, {"name": config_map, "key": "bundle.pem"}))
    found = wait_for_reason(cluster, TEAM, name, "CABundleNotFound")
    assert 'fedid.dev/ca-bundle: "true"' in condition(found)["message"], condition(found)
    assert requests_for(recorder, name) == []
    # Labelling it is picked up at once (the label-filtered watch requeues the identity).
    cluster.kubectl("label", "configmap", config_map, "-n", TEAM, "fedid.dev/ca-bundle=true")
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=30s")
    assert len(requests_for(recorder, name)) == 1
    assert secret_data(cluster, TEAM, f"{name}-token")["decoded"]["access-token"] == "at-cm"
    # A key the ConfigMap lacks (the default is ca.crt) is reported with its name.
    cluster.apply(with_ca_ref("ca-wrong-key", {"name": config_map}))
    wrong = wait_for_reason(cluster, TEAM, "ca-wrong-key", "CABundleNotFound")
    assert "ca.crt" in condition(wrong)["message"]
    assert requests_for(recorder, "ca-wrong-key") == []
    for gone in (name, "ca-wrong-key"):
        cluster.kubectl("delete", "fid", gone, "-n", TEAM)
    cluster.kubectl("delete", "configmap", config_map, "-n", TEAM)


def test_without_the_subject_token_pods_get_only_the_credentials(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str]
) -> None:
    recorder, script, ca = service
    counter = iter(range(1, 1000))
    script.handler = lambda _: Reply(200, {"access_token": f"at-only-{next(counter)}", "token_type": "Bearer",
                                           "expires_in": 40})
    name = "credentials-only"
    manifest = json.loads(identity(name, ca, f"{recorder.url}/allowed/token"))
    manifest["spec"]["output"] = {"includeSubjectToken": False}
    cluster.apply(json.dumps(manifest))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    secret = secret_data(cluster, TEAM, f"{name}-token")
    assert set(secret["decoded"]) == {"expires-at", "access-token", "token-type"}, "the signed token stays out"
    unsigned = secret["metadata"]["annotations"]["fedid.dev/unsigned-token"]
    [sent] = requests_for(recorder, name)
    assert unsigned.endswith(".") and sent.form["subject_token"].startswith(unsigned), "header and claims, no signature"
    with pytest.raises(jwt.InvalidTokenError):
        verify_token(operator, unsigned, operator.issuer_url(ISSUER), "token-service")

    # The unsigned token is enough to keep and renew: one refresh at 2/3 of the 40 s, not a loop.
    wait_for("a refresh", lambda: secret_data(cluster, TEAM, f"{name}-token")["decoded"]["access-token"] == "at-only-2",
             timeout=45)
    assert len(requests_for(recorder, name)) == 2
    # Asking for the token again writes it at once.
    manifest["spec"]["output"] = {"includeSubjectToken": True}
    cluster.apply(json.dumps(manifest))
    back = wait_for("the token back in the Secret", lambda: (
        s if "token" in (s := secret_data(cluster, TEAM, f"{name}-token"))["decoded"] else None), timeout=30)
    assert "fedid.dev/unsigned-token" not in back["metadata"].get("annotations", {})
    verify_token(operator, back["decoded"]["token"], operator.issuer_url(ISSUER), "token-service")
    cluster.kubectl("delete", "fid", name, "-n", TEAM)


@pytest.mark.parametrize(
    ("exchange", "message"),
    [
        (None, "output.includeSubjectToken: false needs spec.exchange"),
        ({"gcp": {"audience": "//iam.googleapis.com/p"}},
         "output.includeSubjectToken: false cannot be used with exchange.gcp"),
    ],
)
def test_dropping_the_subject_token_is_refused_where_it_is_needed(
    cluster: Cluster, operator: Operator, exchange: dict | None, message: str
) -> None:
    spec: dict = {"audiences": ["a"], "output": {"includeSubjectToken": False}}
    if exchange:
        spec["exchange"] = exchange
    manifest = json.dumps({"apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
                           "metadata": {"name": "no-token", "namespace": TEAM}, "spec": spec})
    result = cluster.kubectl("apply", "-f", "-", input=manifest, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_an_azure_exchange_sends_the_token_as_a_client_assertion(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str]
) -> None:
    # A wire test: Entra ID has no local build, so the recording service checks the request's shape
    # (the client credentials grant with fedid's token as a jwt-bearer client assertion).
    recorder, script, ca = service
    script.handler = lambda _: Reply(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                                           "access_token": "at-azure"})
    name = "azure"
    cluster.apply(json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {"issuerRef": ISSUER, "audiences": ["api://AzureADTokenExchange"], "lifetime": "10m", "exchange": {
            "caBundle": ca,
            "azure": {"tenantID": "contoso.onmicrosoft.com", "clientID": "11111111-2222-3333-4444-555555555555",
                      "scope": "https://management.azure.com/.default", "authorityHost": f"{recorder.url}/allowed"},
        }},
    }))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    [sent] = [seen for seen in recorder.requests if seen.path == "/allowed/contoso.onmicrosoft.com/oauth2/v2.0/token"]
    form = sent.form
    assert (form["grant_type"], form["client_id"], form["scope"]) == (
        "client_credentials", "11111111-2222-3333-4444-555555555555", "https://management.azure.com/.default")
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    claims = verify_token(operator, form["client_assertion"], operator.issuer_url(ISSUER), "api://AzureADTokenExchange")
    assert claims["identity"] == name
    files = secret_data(cluster, TEAM, f"{name}-token")["decoded"]
    assert files["access-token"] == "at-azure" and files["token-type"] == "Bearer"
    cluster.kubectl("delete", "fid", name, "-n", TEAM)


def test_a_vault_login_sends_the_role_and_token_and_keeps_the_lease(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str]
) -> None:
    # A wire test of the request's exact shape (headers, mount path, namespace); the real OpenBao
    # is in test_exchange_openbao.py.
    recorder, script, ca = service
    script.handler = lambda _: Reply(200, {"auth": {"client_token": "hvs.at-vault", "lease_duration": 40,
                                                    "renewable": True, "policies": ["ci"]}})
    name = "vault"
    cluster.apply(json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {"issuerRef": ISSUER, "audiences": ["vault"], "lifetime": "10m", "exchange": {
            "caBundle": ca,
            "vault": {"address": f"{recorder.url}/allowed", "authMount": "ci/jwt", "role": "deploy",
                      "vaultNamespace": "team-a"},
        }},
    }))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    logins = [seen for seen in recorder.requests if seen.path == "/allowed/v1/auth/ci/jwt/login"]
    first = logins[0]
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-vault-namespace"] == "team-a"
    assert first.json["role"] == "deploy"
    claims = verify_token(operator, first.json["jwt"], operator.issuer_url(ISSUER), "vault")
    assert claims["identity"] == name
    files = secret_data(cluster, TEAM, f"{name}-token")["decoded"]
    assert files["vault-token"] == "hvs.at-vault"
    # The 40 s lease, not the 10 min token, decides the refresh: a second login within ~30 s.
    wait_for("a second login", lambda: len([s for s in recorder.requests
                                            if s.path == "/allowed/v1/auth/ci/jwt/login"]) >= 2, timeout=45)
    logins = [seen for seen in recorder.requests if seen.path == "/allowed/v1/auth/ci/jwt/login"]
    assert 23 <= logins[1].at - logins[0].at <= 36, logins[1].at - logins[0].at
    cluster.kubectl("delete", "fid", name, "-n", TEAM)


GCP_PROVIDER = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/providers/fedid"
GCP_ACCOUNT = "deployer@proj.iam.gserviceaccount.com"


def test_a_gcp_exchange_trades_at_sts_then_impersonates_and_google_auth_reads_the_files(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A wire test: Google's STS and IAM Credentials have no local build, so the recording service
    # answers in their shapes; then the real google-auth reads the files fedid wrote.
    recorder, script, ca = service
    sts_path, iam_path = "/allowed/sts/v1/token", f"/allowed/iam/v1/projects/-/serviceAccounts/{GCP_ACCOUNT}:generateAccessToken"
    served = {"sts": 0, "iam": 0}

    def answer(seen: Recorded) -> Reply:
        if seen.path == sts_path:
            served["sts"] += 1
            return Reply(200, {"access_token": f"at-federated-{served['sts']}", "expires_in": 3600, "token_type": "Bearer",
                               "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})
        if seen.path == iam_path:
            served["iam"] += 1
            # The service account's token lives 45 s: its expireTime, not the STS token's hour, decides.
            expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 45))
            return Reply(200, {"accessToken": f"at-account-{served['iam']}", "expireTime": expire})
        return Reply(404, {"error": "unscripted"})

    script.handler = answer
    name = "gcp"
    mount = tmp_path / "fedid"
    mount.mkdir()
    cluster.apply(json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {"issuerRef": ISSUER, "audiences": [GCP_PROVIDER], "lifetime": "10m", "exchange": {
            "caBundle": ca,
            "gcp": {"audience": GCP_PROVIDER, "serviceAccountEmail": GCP_ACCOUNT, "tokenLifetimeSeconds": 900,
                    "scopes": ["https://www.googleapis.com/auth/devstorage.read_only"],
                    "tokenURL": f"{recorder.url}{sts_path}", "impersonationURL": f"{recorder.url}{iam_path}",
                    "mountPath": str(mount)},
        }},
    }))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    [exchange] = [seen for seen in recorder.requests if seen.path == sts_path]
    form = exchange.form
    assert "authorization" not in exchange.headers, "STS authenticates the token, not a client"
    assert form == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "audience": GCP_PROVIDER,
        "scope": "https://www.googleapis.com/auth/devstorage.read_only",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "subject_token": form["subject_token"], "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    }
    claims = verify_token(operator, form["subject_token"], operator.issuer_url(ISSUER), GCP_PROVIDER)
    assert claims["identity"] == name
    [impersonation] = [seen for seen in recorder.requests if seen.path == iam_path]
    assert impersonation.headers["authorization"] == "Bearer at-federated-1"
    assert impersonation.headers["content-type"] == "application/json"
    assert impersonation.json == {"scope": ["https://www.googleapis.com/auth/devstorage.read_only"], "lifetime": "900s"}
    found = get_json(cluster, "fid", name, "-n", TEAM)
    assert found["status"]["lastExchange"]["endpointHost"] == recorder.url.removeprefix("https://")
    files = secret_data(cluster, TEAM, f"{name}-token")["decoded"]
    assert files["access-token"] == "at-account-1" and files["token-type"] == "Bearer"
    expires = files["expires-at"]
    assert 0 < time.mktime(time.strptime(expires, "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(time.gmtime()) <= 46, expires

    # The SDK's own path: GOOGLE_APPLICATION_CREDENTIALS=<mount>/external_account.json, reading the
    # token file beside it, as a pod that mounts the Secret at mountPath does.
    for key in ("token", "external_account.json"):
        (mount / key).write_text(files[key])
    config = json.loads(files["external_account.json"])
    assert config["credential_source"] == {"file": str(mount / "token"), "format": {"type": "text"}}
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(mount / "external_account.json"))
    credentials, _ = google.auth.default()
    (tmp_path / "ca.pem").write_text(ca)
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would replace `verify`
    session.verify = str(tmp_path / "ca.pem")
    before = len(recorder.requests)
    credentials.refresh(google.auth.transport.requests.Request(session))
    assert credentials.token == "at-account-2"
    sdk_sts, sdk_iam = recorder.requests[before], recorder.requests[before + 1]
    assert (sdk_sts.path, sdk_iam.path) == (sts_path, iam_path)
    assert sdk_sts.form["subject_token"] == files["token"] and sdk_sts.form["audience"] == GCP_PROVIDER
    assert sdk_iam.headers["authorization"] == "Bearer at-federated-2"
    assert sdk_iam.json["lifetime"] == "900s"

    # Refresh: before the service account token's 45 s end, a fresh token goes through both steps.
    wait_for("a refresh through STS and IAM", lambda: served["iam"] >= 3, timeout=45)
    wait_for("the refreshed token in the Secret", lambda: secret_data(
        cluster, TEAM, f"{name}-token")["decoded"]["access-token"] == "at-account-3", timeout=15)
    fedid_sts = [seen for seen in recorder.requests if seen.path == sts_path and seen is not sdk_sts]
    assert fedid_sts[1].form["subject_token"] != fedid_sts[0].form["subject_token"], "a fresh token each refresh"
    cluster.kubectl("delete", "fid", name, "-n", TEAM)


def test_a_gcp_impersonation_endpoint_the_issuer_does_not_allow_is_never_contacted(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Script, str]
) -> None:
    recorder, script, ca = service
    script.handler = lambda _: Reply(200, {"access_token": "at-federated", "expires_in": 3600})
    name = "gcp-denied"
    cluster.apply(json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {"issuerRef": ISSUER, "audiences": [GCP_PROVIDER], "lifetime": "10m", "exchange": {
            "caBundle": ca,
            "gcp": {"audience": GCP_PROVIDER, "serviceAccountEmail": GCP_ACCOUNT,
                    "tokenURL": f"{recorder.url}/allowed/sts/v1/token",
                    "impersonationURL": f"{recorder.url}/elsewhere/{GCP_ACCOUNT}:generateAccessToken"},
        }},
    }))
    found = wait_for_reason(cluster, TEAM, name, "EndpointNotAllowed")
    assert "/elsewhere/" in condition(found)["message"]
    assert not [seen for seen in recorder.requests if seen.form.get("audience") == GCP_PROVIDER
                and json.loads(base64.urlsafe_b64decode(seen.form["subject_token"].split(".")[1] + "==")).get(
                    "identity") == name], "the STS was contacted although the second endpoint is not allowed"
    cluster.kubectl("delete", "fid", name, "-n", TEAM)
