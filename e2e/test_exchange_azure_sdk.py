"""The `azure` kind read back by the real azure-identity: `WorkloadIdentityCredential`, configured
only by the environment a pod gets (`AZURE_FEDERATED_TOKEN_FILE` on the mounted Secret's `token`
key, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`), sends the token fedid wrote as
its `client_assertion`, and after fedid refreshes the Secret a new credential sends the new one.

A wire test: Entra ID has no local build, so a recording HTTPS service on loopback
(`peers/recorder.py`) stands in for the authority and answers in Entra's shape. The fedid side of
the grant is also in `test_exchange.py`; here the point is the SDK's half of the contract.

What azure-identity 1.27.0 sends: `WorkloadIdentityCredential` is a `ClientAssertionCredential`,
which talks to the token endpoint through its own `AadClient`, not through MSAL's client
application, so there is no instance discovery and no OpenID metadata request: exactly one POST to
`<AZURE_AUTHORITY_HOST>/<tenant>/oauth2/v2.0/token` per token (MSAL only supplies the in-memory
token cache). A credential object reads the token file at most every 600 s (`TokenFileMixin`), so a
token it uses can be that much older than the file: the renewal at 2/3 of `lifetime` leaves the
file's token at least 1/3 of it, so tokens for this SDK need a `lifetime` well above 30 min (the
issuer default of 1h leaves 20 min, of which the SDK may spend 10); a 10 to 30 min lifetime can
make it send an expired assertion.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from azure.identity import WorkloadIdentityCredential

from conftest import Cluster, wait_for
from fedid_harness import (
    Operator,
    chart_operator,
    get_json,
    secret_data,
    verify_token,
    write_serving_certificate,
)
from peers.recorder import Recorded, Recorder, Reply

RUN = uuid.uuid4().hex[:6]
TEAM = f"azure-sdk-{RUN}"
ISSUER = f"azure-sdk-{RUN}"
NAME = "workload"
TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SCOPE = "https://management.azure.com/.default"
AUDIENCE = "api://AzureADTokenExchange"
TOKEN_PATH = f"/{TENANT}/oauth2/v2.0/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Entra:
    """The stand-in authority: Entra's token reply, `at-fedid-<n>` for fedid's requests and
    `at-sdk-<n>` for azure-identity's (told apart by User-Agent), living `sdk_expires_in`."""

    def __init__(self) -> None:
        self.served = {"fedid": 0, "sdk": 0}
        self.sdk_expires_in = 3599

    @staticmethod
    def client(seen: Recorded) -> str:
        return "sdk" if seen.headers.get("user-agent", "").startswith("azsdk-python-identity/") else "fedid"

    def __call__(self, seen: Recorded) -> Reply:
        if seen.method != "POST" or seen.path != TOKEN_PATH:
            return Reply(404, {"error": "unscripted"})
        who = self.client(seen)
        self.served[who] += 1
        expires_in = self.sdk_expires_in if who == "sdk" else 3599
        return Reply(200, {"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in,
                           "access_token": f"at-{who}-{self.served[who]}"},
                     {"Content-Type": "application/json; charset=utf-8"})


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorder, Entra, Path]]:
    directory = tmp_path_factory.mktemp("entra")
    ca, cert, key = write_serving_certificate(directory)
    entra = Entra()
    with Recorder(cert, key, handler=entra) as recorder:
        yield recorder, entra, ca


@pytest.fixture(scope="module")
def operator(cluster: Cluster, service: tuple[Recorder, Entra, Path]) -> Iterator[Operator]:
    recorder, _, _ = service
    with chart_operator(cluster, "fedid-azure-sdk", [TEAM]) as running:
        issuer = {
            "apiVersion": "fedid.dev/v1alpha1",
            "kind": "IdentityIssuer",
            "metadata": {"name": ISSUER},
            "spec": {
                "issuerURL": running.issuer_url(ISSUER),
                "signing": {"prepublishPeriod": "0s"},
                "allowedNamespaces": {"names": [TEAM]},
                # As an admin would allow https://login.microsoftonline.com/<tenant>/.
                "exchange": {"allowedEndpoints": [f"{recorder.url}/{TENANT}/"]},
            },
        }
        wait_for("the issuer to be accepted", lambda: cluster.apply(json.dumps(issuer)).returncode == 0)
        cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{ISSUER}", "--timeout=60s")
        yield running
    cluster.kubectl("delete", "identityissuer", ISSUER, "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", TEAM, "--wait=false", check=False)
    assert "at-fedid-" not in running.logs(), "an access token appeared in the operator's logs"


@pytest.fixture(scope="module")
def workload(cluster: Cluster, operator: Operator, service: tuple[Recorder, Entra, Path]) -> Iterator[str]:
    """The identity, Ready: a 30 s token (the harness's --min-token-lifetime), renewed at about 20 s."""
    recorder, _, ca = service
    cluster.apply(json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": NAME, "namespace": TEAM},
        "spec": {"issuerRef": ISSUER, "audiences": [AUDIENCE], "lifetime": "30s", "exchange": {
            "caBundle": ca.read_text(),
            "azure": {"tenantID": TENANT, "clientID": CLIENT_ID, "scope": SCOPE, "authorityHost": recorder.url},
        }},
    }))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{NAME}", "-n", TEAM, "--timeout=60s")
    yield NAME
    cluster.kubectl("delete", "fid", NAME, "-n", TEAM, check=False)


@pytest.fixture
def pod_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    service: tuple[Recorder, Entra, Path]) -> Path:
    """What a pod that mounts the Secret gets: the mount (a temp dir) and the SDK's environment.
    Returns the token file's path (not yet written)."""
    recorder, _, ca = service
    mount = tmp_path / "azure-identity"
    mount.mkdir()
    token_file = mount / "token"
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", recorder.url)
    # azure-core's RequestsTransport keeps requests' trust_env, so REQUESTS_CA_BUNDLE (this machine
    # points it at the system bundle) decides `verify`: point it at the stand-in's CA instead of
    # passing connection_verify, keeping the credential's construction env-only.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
    return token_file


def mount(token_file: Path, token: str) -> None:
    """Writes the file as the kubelet updates a Secret volume: atomically (a rename), never torn."""
    staged = token_file.with_name(f".{token_file.name}.{uuid.uuid4().hex[:6]}")
    staged.write_text(token)
    os.replace(staged, token_file)


def token_requests(recorder: Recorder, client: str) -> list[Recorded]:
    return [seen for seen in list(recorder.requests) if seen.path == TOKEN_PATH and Entra.client(seen) == client]


def test_fedid_exchanges_its_token_as_a_client_assertion_at_the_tenant(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Entra, Path], workload: str
) -> None:
    recorder, _, _ = service
    [sent] = token_requests(recorder, "fedid")
    assert sent.method == "POST" and sent.headers["content-type"] == "application/x-www-form-urlencoded"
    assert sent.headers["user-agent"].startswith("fedid/")
    form = sent.form
    assert set(form) == {"grant_type", "client_id", "scope", "client_assertion_type", "client_assertion"}
    assert (form["grant_type"], form["client_id"], form["scope"], form["client_assertion_type"]) == (
        "client_credentials", CLIENT_ID, SCOPE, JWT_BEARER)
    files = secret_data(cluster, TEAM, f"{workload}-token")["decoded"]
    assert files["token"] == form["client_assertion"]
    claims = verify_token(operator, files["token"], operator.issuer_url(ISSUER), AUDIENCE)
    assert (claims["namespace"], claims["identity"]) == (TEAM, workload)
    assert claims["exp"] - claims["iat"] == 30
    assert (files["access-token"], files["token-type"]) == ("at-fedid-1", "Bearer")
    status = get_json(cluster, "fid", workload, "-n", TEAM)["status"]
    assert status["lastExchange"]["outcome"] == "Exchanged"
    assert status["lastExchange"]["endpointHost"] == f"127.0.0.1:{recorder.port}"


def test_workload_identity_credential_sends_the_secrets_token_as_its_client_assertion(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Entra, Path], workload: str,
    pod_environment: Path,
) -> None:
    recorder, entra, _ = service
    entra.sdk_expires_in = 3599
    token = secret_data(cluster, TEAM, f"{workload}-token")["decoded"]["token"]
    mount(pod_environment, token)
    before = len(token_requests(recorder, "sdk"))

    credential = WorkloadIdentityCredential()  # the environment's defaults, nothing else
    access = credential.get_token(SCOPE)
    assert access.token == f"at-sdk-{entra.served['sdk']}"
    [sent] = token_requests(recorder, "sdk")[before:]
    assert sent.method == "POST" and sent.headers["content-type"] == "application/x-www-form-urlencoded"
    assert sent.form == {"grant_type": "client_credentials", "client_id": CLIENT_ID, "scope": SCOPE,
                         "client_assertion_type": JWT_BEARER, "client_assertion": token}
    claims = verify_token(operator, sent.form["client_assertion"], operator.issuer_url(ISSUER), AUDIENCE)
    assert claims["identity"] == workload
    # Nothing but that POST: no instance discovery, no metadata GET.
    assert [(seen.method, seen.path) for seen in recorder.requests if Entra.client(seen) == "sdk"][before:] == [
        ("POST", TOKEN_PATH)]

    # The access token is cached: asking again sends nothing.
    assert credential.get_token(SCOPE).token == access.token
    assert len(token_requests(recorder, "sdk")) == before + 1
    credential.close()


def test_after_fedid_refreshes_the_secret_a_new_credential_sends_the_new_token(
    cluster: Cluster, operator: Operator, service: tuple[Recorder, Entra, Path], workload: str,
    pod_environment: Path,
) -> None:
    recorder, entra, _ = service
    # The SDK's access tokens live 2 s here, so a long-lived credential must go back to the
    # authority by the end of this test.
    entra.sdk_expires_in = 2
    secret = secret_data(cluster, TEAM, f"{workload}-token")
    old = secret["decoded"]["token"]
    mount(pod_environment, old)
    long_lived = WorkloadIdentityCredential()
    long_lived.get_token(SCOPE)
    assert token_requests(recorder, "sdk")[-1].form["client_assertion"] == old
    exchanges = len(token_requests(recorder, "fedid"))

    # fedid renews the 30 s token at about 20 s, exchanging the new one, in one Secret write.
    refreshed = wait_for("fedid to refresh the Secret's token", lambda: (
        s if (s := secret_data(cluster, TEAM, f"{workload}-token"))["decoded"]["token"] != old else None), timeout=40)
    new = refreshed["decoded"]["token"]
    claims = verify_token(operator, new, operator.issuer_url(ISSUER), AUDIENCE)
    assert claims["jti"] != verify_token(operator, old, operator.issuer_url(ISSUER), AUDIENCE)["jti"]
    fedid_sent = token_requests(recorder, "fedid")[exchanges:]
    assert [seen.form["client_assertion"] for seen in fedid_sent] == [new]
    assert refreshed["decoded"]["access-token"] == f"at-fedid-{entra.served['fedid']}"

    # The kubelet updates the mounted file; a credential created now reads it and sends the new token.
    mount(pod_environment, new)
    fresh = WorkloadIdentityCredential()
    access = fresh.get_token(SCOPE)
    sent = token_requests(recorder, "sdk")[-1]
    assert access.token == f"at-sdk-{entra.served['sdk']}"
    assert sent.form["client_assertion"] == new and sent.form["client_id"] == CLIENT_ID
    verify_token(operator, sent.form["client_assertion"], operator.issuer_url(ISSUER), AUDIENCE)

    # The SDK's side of the contract: a credential re-reads the file at most every 600 s, so one
    # created before the refresh, its 2 s access token long expired, goes back to the authority
    # with the token it read then, not the file's (see the module docstring for what that means
    # for `lifetime`).
    count = len(token_requests(recorder, "sdk"))
    assert long_lived.get_token(SCOPE).token == f"at-sdk-{entra.served['sdk']}"
    [again] = token_requests(recorder, "sdk")[count:]
    assert again.form["client_assertion"] == old
    fresh.close()
    long_lived.close()
