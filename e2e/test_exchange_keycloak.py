"""Token exchange at a real Keycloak (`peers/keycloak/fetch`), started here on loopback with TLS.

Keycloak trusts fedid's issuer the way a token service in production would: its realm has an
OIDC identity provider whose issuer and JWKS URL are fedid's (fetched over HTTPS, trusting fedid's
CA), and clients whose credentials are fedid's signatures. No secret is shared.

- `oauth2` with `clientAuth.privateKeyJWT`: fedid authenticates as client `kc-<namespace>` with an
  RFC 7523 assertion that Keycloak verifies against fedid's JWKS (the client's `jwks.url`), and
  Keycloak's legacy (V1) RFC 8693 exchange verifies the subject token against the identity
  provider and makes a user of its `sub`.
- `azure` with `tokenURL`: the client credentials grant where fedid's token is the client
  assertion, checked by Keycloak's federated client authenticator (`iss` names the identity
  provider, `sub` the client, `aud` the realm).
- Refusals (another key set, another audience, another `sub`) are `ExchangeRejected` with
  Keycloak's `invalid_client`; credentials refresh before Keycloak's 60-second tokens expire.

Every access token is verified with PyJWT against Keycloak's own JWKS.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
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
    jwks_for,
    secret_data,
    verify_token,
    wait_for_reason,
    write_serving_certificate,
)

RUN = uuid.uuid4().hex[:6]
TEAM = f"keycloak-{RUN}"
ISSUER = f"keycloak-{RUN}"
OTHER_ISSUER = f"keycloak-other-{RUN}"  # its keys are the ones a misconfigured client trusts
REALM = "fedid"
IDP = "fedid"  # the realm's identity provider for fedid's issuer
PKJWT_CLIENT = f"kc-{TEAM}"  # allowed to TEAM by the issuer's privateKeyJWTClientIDs
OTHER_KEYS_CLIENT = f"kc-{TEAM}-elsewhere"  # allowed too, but its jwks.url is OTHER_ISSUER's
AZURE_CLIENT = "fedid-azure"
AZURE_IDENTITY = "azure"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
LIFESPAN = 60  # the realm's accessTokenLifespan (realm.json)
READY_TIMEOUT = 240  # Keycloak's boot: 17 s on an idle 2-core machine, up to 63 s under load


def keycloak_install() -> tuple[Path, float]:
    """The install directory of `peers/keycloak/fetch` (FEDID_PEERS_KEYCLOAK_READY when e2e/test ran
    it) and how long fetching took here."""
    if os.environ.get("FEDID_PEERS_KEYCLOAK_READY"):
        return Path(os.environ["FEDID_PEERS_KEYCLOAK_READY"]), 0.0
    started = time.monotonic()
    result = subprocess.run([str(E2E_DIR / "peers" / "keycloak" / "fetch")], capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"peers/keycloak/fetch failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1]), time.monotonic() - started


def read_env(path: Path) -> dict[str, str]:
    """The `export NAME='value'` lines that fetch writes."""
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            values[name] = value.strip("'")
    return values


def report(request: pytest.FixtureRequest, line: str) -> None:
    """A line on the terminal, outside pytest's capture (boot times for whoever runs the module)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


@dataclass
class Keycloak:
    """One Keycloak process with a home of its own (the fetched install is only read)."""

    install: Path
    workdir: Path
    port: int
    truststore: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    boot_seconds: float = 0.0
    ca: Path = field(init=False)
    home: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ca, self.cert, self.key = write_serving_certificate(self.workdir)
        self.home = self.make_home()

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.base}/realms/{REALM}"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token"

    @property
    def log(self) -> Path:
        return self.workdir / "keycloak.log"

    def make_home(self) -> Path:
        """A Keycloak home under workdir: `kc.sh` takes its home from its own path, and a run writes
        `data/` (the truststore it builds from --truststore-paths, transaction logs). The jars
        (lib/lib, 168 MB) are a symlink into the install, the rest (5 MB) is copied, so two runs
        never share a written file."""
        dist = self.install / "keycloak"
        home = self.workdir / "home"
        (home / "bin").mkdir(parents=True)
        shutil.copy2(dist / "bin" / "kc.sh", home / "bin" / "kc.sh")
        (home / "lib").mkdir()
        for name in ("quarkus", "app"):
            shutil.copytree(dist / "lib" / name, home / "lib" / name)
        shutil.copy2(dist / "lib" / "quarkus-run.jar", home / "lib" / "quarkus-run.jar")
        (home / "lib" / "lib").symlink_to(dist / "lib" / "lib", target_is_directory=True)
        for name in ("conf", "providers", "themes"):
            shutil.copytree(dist / name, home / name)
        (home / "data" / "import").mkdir(parents=True)
        # --import-realm reads data/import of the home; ${...} placeholders come from the environment
        shutil.copy2(E2E_DIR / "peers" / "keycloak" / "realm.json", home / "data" / "import" / "realm.json")
        return home

    def start(self) -> None:
        args = [
            str(self.home / "bin" / "kc.sh"), "start", "--optimized", "--import-realm",
            "--http-enabled=false", "--http-host=127.0.0.1", f"--https-port={self.port}",
            f"--https-certificate-file={self.cert}", f"--https-certificate-key-file={self.key}",
            f"--truststore-paths={self.truststore}",  # fedid's CA, for its JWKS
            f"--hostname={self.base}",
            "--cache=local",  # no JGroups: nothing listens beyond loopback
        ]
        started = time.monotonic()
        self.process = subprocess.Popen(args, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.env, cwd=self.workdir,
                                        start_new_session=True)
        wait_for(f"Keycloak's realm discovery (log: {self.log})", self._ready, timeout=READY_TIMEOUT, interval=0.5)
        self.boot_seconds = time.monotonic() - started

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"keycloak exited with {self.process.returncode}:\n{self.tail()}")
        response = requests.get(f"{self.issuer}/.well-known/openid-configuration", verify=str(self.ca), timeout=5)
        return response.status_code == 200 and response.json()["issuer"] == self.issuer

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # kc.sh forwards it to java
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def warnings(self) -> str:
        """Keycloak's WARN/ERROR lines: where it says why it refused something."""
        found = [line for line in self.log.read_text(errors="replace").splitlines()
                 if (" WARN " in line or " ERROR " in line) and "[org.keycloak.common.Profile]" not in line]
        return "\n".join(found[-15:])

    # --- the admin API (the bootstrap admin of the master realm) ---

    def admin(self, method: str, path: str, body: object = None) -> requests.Response:
        token = requests.post(f"{self.base}/realms/master/protocol/openid-connect/token", verify=str(self.ca),
                              timeout=10, data={"grant_type": "password", "client_id": "admin-cli",
                                                "username": "admin", "password": "admin"})
        token.raise_for_status()
        response = requests.request(method, f"{self.base}/admin/realms/{REALM}{path}", json=body, timeout=10,
                                    verify=str(self.ca),
                                    headers={"Authorization": f"Bearer {token.json()['access_token']}"})
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text[:300]}"
        return response

    def client_uuid(self, client_id: str) -> str:
        [found] = self.admin("GET", f"/clients?clientId={client_id}").json()
        return found["id"]

    def allow_exchange_of_idp_tokens(self, client_id: str) -> None:
        """The legacy (V1) permission that lets `client_id` exchange tokens of the identity provider:
        it lives in realm-management's authorization settings, which a realm import cannot set."""
        permissions = self.admin("PUT", f"/identity-provider/instances/{IDP}/management/permissions",
                                 {"enabled": True}).json()
        permission_id = permissions["scopePermissions"]["token-exchange"]
        authz = f"/clients/{self.client_uuid('realm-management')}/authz/resource-server"
        policy = self.admin("POST", f"{authz}/policy/client", {
            "name": f"allow-{client_id}", "logic": "POSITIVE", "clients": [self.client_uuid(client_id)]}).json()
        permission = self.admin("GET", f"{authz}/permission/scope/{permission_id}").json()
        resources = self.admin("GET", f"{authz}/policy/{permission_id}/resources").json()
        scopes = self.admin("GET", f"{authz}/policy/{permission_id}/scopes").json()
        permission.update(policies=[policy["id"]], resources=[r["_id"] for r in resources],
                          scopes=[s["id"] for s in scopes], decisionStrategy="UNANIMOUS")
        self.admin("PUT", f"{authz}/permission/scope/{permission_id}", permission)

    def events(self, kind: str, client_id: str, user: str | None = None) -> list[dict]:
        """The realm's saved events of `kind` for a client (newest first), as Keycloak recorded them."""
        query = f"/events?type={kind}&client={client_id}&max=1000" + (f"&user={user}" if user else "")
        return self.admin("GET", query).json()

    def user(self, username: str) -> dict:
        [found] = self.admin("GET", f"/users?username={username}&exact=true").json()
        found["links"] = self.admin("GET", f"/users/{found['id']}/federated-identity").json()
        return found

    # --- what a consumer of the access token does ---

    def verify(self, token: str) -> dict:
        """Verifies an access token against the realm's JWKS (from its discovery); returns the claims."""
        discovery = requests.get(f"{self.issuer}/.well-known/openid-configuration", verify=str(self.ca), timeout=10)
        keys = requests.get(discovery.json()["jwks_uri"], verify=str(self.ca), timeout=10).json()
        header = jwt.get_unverified_header(token)
        key = {k.key_id: k for k in jwt.PyJWKSet.from_dict(keys).keys}[header["kid"]]
        return jwt.decode(token, key.key, algorithms=[header["alg"]], issuer=self.issuer,
                          options={"verify_aud": False, "require": ["exp", "iat", "iss", "sub", "azp", "jti"]})


@pytest.fixture(scope="module")
def install(request: pytest.FixtureRequest) -> Path:
    path, seconds = keycloak_install()
    report(request, f"keycloak: fetch took {seconds:.1f}s ({path})")
    return path


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    with chart_operator(cluster, "fedid-keycloak", [TEAM]) as running:
        yield running
    for name in (ISSUER, OTHER_ISSUER):
        cluster.kubectl("delete", "identityissuer", name, "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", TEAM, "--wait=false", check=False)


@pytest.fixture(scope="module")
def keycloak_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def issuer(cluster: Cluster, operator: Operator, keycloak_port: int) -> dict:
    """fedid's issuer for TEAM, which may send tokens to the realm only, and a second issuer whose
    keys no identity uses: both Ready, with their discovery documents."""
    for name, spec in (
        (ISSUER, {
            "allowedNamespaces": {"names": [TEAM]},
            "exchange": {
                "allowedEndpoints": [f"https://127.0.0.1:{keycloak_port}/realms/{REALM}/"],
                "privateKeyJWTClientIDs": ["kc-{namespace}", "kc-{namespace}-elsewhere"],
            },
        }),
        (OTHER_ISSUER, {}),
    ):
        manifest = {"apiVersion": "fedid.dev/v1alpha1", "kind": "IdentityIssuer", "metadata": {"name": name},
                    "spec": {"issuerURL": operator.issuer_url(name), "signing": {"prepublishPeriod": "0s"}, **spec}}
        wait_for(f"issuer {name} to be accepted", lambda: cluster.apply(json.dumps(manifest)).returncode == 0)
    documents = {}
    for name in (ISSUER, OTHER_ISSUER):
        cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{name}", "--timeout=60s")
        url = operator.issuer_url(name)
        # Ready means served: the replica reports a new active key only once its own documents
        # publish it, so discovery and JWKS answer at once (a 404 here was seen before that).
        served = requests.get(f"{url}/.well-known/openid-configuration", verify=str(operator.ca), timeout=10)
        assert served.status_code == 200, f"{name} is Ready but its discovery answered {served.status_code}"
        documents[name] = served.json()
        active = get_json(cluster, "identityissuer", name)["status"]["activeKeyID"]
        assert active in [key["kid"] for key in jwks_for(operator, url)["keys"]], f"{name}'s active key is not served"
    return {"url": operator.issuer_url(ISSUER), "jwks_uri": documents[ISSUER]["jwks_uri"],
            "other_jwks_uri": documents[OTHER_ISSUER]["jwks_uri"]}


@pytest.fixture(scope="module")
def keycloak(request: pytest.FixtureRequest, install: Path, operator: Operator, issuer: dict,
             keycloak_port: int) -> Iterator[Keycloak]:
    fetched = read_env(install / "env")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KC_", "KEYCLOAK_", "JAVA_"))}
    env.update(
        JAVA_HOME=fetched["JAVA_HOME"],
        KC_BOOTSTRAP_ADMIN_USERNAME="admin", KC_BOOTSTRAP_ADMIN_PASSWORD="admin",
        # realm.json's placeholders
        FEDID_ISSUER=issuer["url"], FEDID_JWKS_URL=issuer["jwks_uri"], FEDID_OTHER_JWKS_URL=issuer["other_jwks_uri"],
        FEDID_PKJWT_CLIENT=PKJWT_CLIENT, FEDID_PKJWT_OTHER_CLIENT=OTHER_KEYS_CLIENT,
        FEDID_AZURE_CLIENT=AZURE_CLIENT, FEDID_AZURE_SUBJECT=f"system:fedid:{TEAM}:{AZURE_IDENTITY}",
    )
    workdir = Path(tempfile.mkdtemp(prefix="fedid-e2e-keycloak-peer-"))
    peer = Keycloak(install=install, workdir=workdir, port=keycloak_port, truststore=operator.ca, env=env)
    try:
        peer.start()
        report(request, f"keycloak {fetched['KEYCLOAK_VERSION']}: ready in {peer.boot_seconds:.1f}s (log: {peer.log})")
        peer.allow_exchange_of_idp_tokens(PKJWT_CLIENT)
        yield peer
    finally:
        peer.stop()
        shutil.rmtree(peer.home, ignore_errors=True)  # the log stays in workdir


def identity(keycloak: Keycloak, name: str, exchange: dict) -> str:
    return json.dumps({
        "apiVersion": "fedid.dev/v1alpha1",
        "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": TEAM},
        # Keycloak's federated client authentication wants one audience: the realm
        "spec": {"issuerRef": ISSUER, "audiences": [keycloak.issuer], "lifetime": "15m",
                 "exchange": {"caBundle": keycloak.ca.read_text(), **exchange}},
    })


def token_exchange(keycloak: Keycloak, client_id: str, **private_key_jwt: str) -> dict:
    return {"oauth2": {
        "tokenURL": keycloak.token_url,
        "requestedTokenType": ACCESS_TOKEN_TYPE,
        "extraParameters": {"subject_issuer": IDP},
        "clientAuth": {"clientID": client_id, "privateKeyJWT": private_key_jwt},
    }}


def azure(keycloak: Keycloak) -> dict:
    return {"azure": {"clientID": AZURE_CLIENT, "scope": "openid", "tokenURL": keycloak.token_url}}


def wait_ready(cluster: Cluster, keycloak: Keycloak, name: str, timeout: float = 60) -> dict:
    """The identity once Ready; on a timeout, its status and what Keycloak logged."""
    def ready() -> dict | None:
        fid = get_json(cluster, "fid", name, "-n", TEAM)
        return fid if (condition(fid) or {}).get("status") == "True" else None

    try:
        return wait_for(f"fid/{name} to be Ready", ready, timeout=timeout)
    except pytest.fail.Exception:
        status = get_json(cluster, "fid", name, "-n", TEAM).get("status")
        pytest.fail(f"fid/{name} not Ready: {json.dumps(status)}\nKeycloak said:\n{keycloak.warnings()}")


def assert_rejected(cluster: Cluster, name: str, code: str) -> dict:
    """Keycloak refused the first exchange: ExchangeRejected with its code, no credentials written."""
    fid = wait_for_reason(cluster, TEAM, name, "ExchangeRejected")
    assert condition(fid)["status"] in ("False", "Unknown")
    assert fid["status"]["lastExchange"]["outcome"] == "ExchangeRejected"
    assert fid["status"]["lastExchange"]["upstreamCode"] == code, fid["status"]["lastExchange"]
    secret = cluster.kubectl("get", "secret", f"{name}-token", "-n", TEAM, "-o", "json", check=False)
    assert secret.returncode != 0 or "access-token" not in (json.loads(secret.stdout).get("data") or {})
    return fid


def test_private_key_jwt_client_exchanges_fedids_token_at_keycloak(cluster: Cluster, operator: Operator,
                                                                    keycloak: Keycloak) -> None:
    name = "exchange"
    subject = f"system:fedid:{TEAM}:{name}"
    cluster.apply(identity(keycloak, name, token_exchange(keycloak, PKJWT_CLIENT)))
    fid = wait_ready(cluster, keycloak, name)
    assert condition(fid, "CredentialsFresh")["reason"] == "Exchanged"
    files = secret_data(cluster, TEAM, f"{name}-token")["decoded"]
    assert files["token-type"].lower() == "bearer"
    assert files["issued-token-type"] == ACCESS_TOKEN_TYPE

    # Keycloak's own access token, for the client fedid authenticated as, and for the user Keycloak
    # made from the subject token's sub.
    claims = keycloak.verify(files["access-token"])
    assert claims["azp"] == PKJWT_CLIENT
    assert claims["preferred_username"] == subject
    assert claims["exp"] - claims["iat"] == LIFESPAN
    fedid_token = verify_token(operator, files["token"], operator.issuer_url(ISSUER), keycloak.issuer)
    assert fedid_token["sub"] == subject
    # The user is linked to the identity provider that trusts fedid's issuer, under fedid's sub:
    # Keycloak checked the subject token against fedid's issuer and JWKS.
    user = keycloak.user(subject)
    assert user["id"] == claims["sub"]
    assert [(link["identityProvider"], link["userId"]) for link in user["links"]] == [(IDP, subject)]
    # The client authenticated with a JWT signed by the issuer's active key (no secret exists),
    # by Keycloak's record of the exchange.
    active_key = get_json(cluster, "identityissuer", ISSUER)["status"]["activeKeyID"]
    [event] = keycloak.events("TOKEN_EXCHANGE", PKJWT_CLIENT, user=user["id"])
    assert event["details"].get("client_auth_method") == "client-jwt", event
    assert event["details"].get("client_jwt_kid") == active_key, event
    # The Secret lasts as long as Keycloak's token (fedid's own lasts 15 minutes).
    assert files["expires-at"] == fid["status"]["credentialsExpireAt"]
    assert abs(jwt_time(fid["status"]["credentialsExpireAt"]) - claims["exp"]) <= 2


def test_keycloak_refuses_an_assertion_signed_by_other_keys_or_for_another_audience(
    cluster: Cluster, keycloak: Keycloak
) -> None:
    # Its issuer as the assertion's audience is one Keycloak accepts besides the token endpoint...
    cluster.apply(identity(keycloak, "issuer-audience", token_exchange(keycloak, PKJWT_CLIENT, audience=keycloak.issuer)))
    wait_ready(cluster, keycloak, "issuer-audience")
    accepted = secret_data(cluster, TEAM, "issuer-audience-token")["decoded"]
    assert keycloak.verify(accepted["access-token"])["azp"] == PKJWT_CLIENT
    # ...another realm is not.
    cluster.apply(identity(keycloak, "other-audience", token_exchange(
        keycloak, PKJWT_CLIENT, audience=f"{keycloak.base}/realms/master")))
    # A client that trusts another issuer's JWKS cannot verify fedid's signature.
    cluster.apply(identity(keycloak, "other-keys", token_exchange(keycloak, OTHER_KEYS_CLIENT)))
    for name in ("other-audience", "other-keys"):
        assert_rejected(cluster, name, "invalid_client")
    # Keycloak's reasons: the assertion's key was found but the assertion refused (its audience),
    # and no key of the client's JWKS has the assertion's kid.
    errors = {client: {e.get("error") for e in keycloak.events("TOKEN_EXCHANGE_ERROR", client)}
              for client in (PKJWT_CLIENT, OTHER_KEYS_CLIENT)}
    assert errors == {PKJWT_CLIENT: {"invalid_client_credentials"},
                      OTHER_KEYS_CLIENT: {"client_credentials_setup_required"}}, keycloak.warnings()
    for name in ("issuer-audience", "other-audience", "other-keys"):
        cluster.kubectl("delete", "fid", name, "-n", TEAM)


def test_azure_kind_authenticates_with_fedids_token_at_keycloaks_token_url(cluster: Cluster, operator: Operator,
                                                                           keycloak: Keycloak) -> None:
    cluster.apply(identity(keycloak, AZURE_IDENTITY, azure(keycloak)))
    fid = wait_ready(cluster, keycloak, AZURE_IDENTITY)
    assert condition(fid, "CredentialsFresh")["reason"] == "Exchanged"
    files = secret_data(cluster, TEAM, f"{AZURE_IDENTITY}-token")["decoded"]
    assert files["token-type"].lower() == "bearer"
    claims = keycloak.verify(files["access-token"])
    assert claims["azp"] == AZURE_CLIENT
    assert claims["preferred_username"] == f"service-account-{AZURE_CLIENT}"
    # What Keycloak's federated authenticator matched: iss (the identity provider), sub (the
    # client's jwt.credential.sub), aud (the realm, exactly).
    assertion = verify_token(operator, files["token"], operator.issuer_url(ISSUER), keycloak.issuer)
    assert assertion["sub"] == f"system:fedid:{TEAM}:{AZURE_IDENTITY}"
    assert assertion["aud"] in (keycloak.issuer, [keycloak.issuer])
    [event] = keycloak.events("CLIENT_LOGIN", AZURE_CLIENT)
    assert event["details"].get("client_auth_method") == "federated-jwt", event
    assert event["details"].get("client_assertion_issuer") == operator.issuer_url(ISSUER), event
    assert event["details"].get("client_assertion_sub") == assertion["sub"], event

    # Another identity's token has another sub, which no client trusts.
    cluster.apply(identity(keycloak, "azure-other", azure(keycloak)))
    assert_rejected(cluster, "azure-other", "invalid_client")
    assert keycloak.events("CLIENT_LOGIN", AZURE_CLIENT) == [event]
    cluster.kubectl("delete", "fid", "azure-other", "-n", TEAM)


def test_credentials_refresh_before_keycloaks_tokens_expire(cluster: Cluster, operator: Operator,
                                                           keycloak: Keycloak) -> None:
    """Both identities above refresh at about 2/3 of Keycloak's 60 s, each time with a fresh token
    and assertion (Keycloak refuses a reused jti), once per interval and no more."""
    kinds = {"exchange": "oauth2", AZURE_IDENTITY: "azure"}

    def requests_sent(kind: str) -> float:
        return operator.metric("fedid_exchange_requests_total", {"kind": kind, "outcome": "Exchanged"})

    def keycloak_grants() -> dict[str, int]:
        user = keycloak.user(f"system:fedid:{TEAM}:exchange")["id"]
        return {"exchange": len(keycloak.events("TOKEN_EXCHANGE", PKJWT_CLIENT, user=user)),
                AZURE_IDENTITY: len(keycloak.events("CLIENT_LOGIN", AZURE_CLIENT))}

    granted = keycloak_grants()
    before = {name: (secret_data(cluster, TEAM, f"{name}-token")["decoded"], requests_sent(kind))
              for name, kind in kinds.items()}
    seen: dict[str, tuple[dict, float, float]] = {}  # name -> (Secret data, when seen, requests by then)

    def refreshed() -> bool:
        for name, kind in kinds.items():
            if name not in seen:
                files = secret_data(cluster, TEAM, f"{name}-token")["decoded"]
                if files["access-token"] != before[name][0]["access-token"]:
                    seen[name] = (files, time.time(), requests_sent(kind))
        return len(seen) == len(kinds)

    wait_for("both identities' credentials to be refreshed", refreshed, timeout=LIFESPAN + 15, interval=0.5)
    for name in kinds:
        (old, count), (new, seen_at, count_then) = before[name], seen[name]
        # One request for the refresh: no hot loop.
        assert count_then == count + 1, (name, count, count_then)
        old_claims, claims = keycloak.verify(old["access-token"]), keycloak.verify(new["access-token"])
        # Before Keycloak's token expired, at about 2/3 of its lifespan (40 s, +-10%).
        assert seen_at < old_claims["exp"], (name, seen_at, old_claims["exp"])
        assert 0.5 * LIFESPAN <= claims["iat"] - old_claims["iat"] <= 0.85 * LIFESPAN, (name, old_claims, claims)
        assert (claims["azp"], claims["sub"]) == (old_claims["azp"], old_claims["sub"])
        # With a fresh fedid token, and the next refresh a whole interval away.
        jti = [jwt.decode(files["token"], options={"verify_signature": False})["jti"] for files in (old, new)]
        assert jti[0] != jti[1]
        status = get_json(cluster, "fid", name, "-n", TEAM)["status"]
        assert jwt_time(status["renewAt"]) - seen_at >= 0.5 * LIFESPAN, status
    # Keycloak's side: one more token exchange for the user, one more login of the federated client.
    assert keycloak_grants() == {name: count + 1 for name, count in granted.items()}


def jwt_time(rfc3339: str) -> float:
    """Unix time of a status timestamp such as 2026-01-15T08:40:00Z."""
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
