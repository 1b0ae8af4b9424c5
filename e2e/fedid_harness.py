"""Runs the fedid operator out of cluster against the local control plane, for the e2e tests."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import REPO_ROOT, Cluster, wait_for
from peers.recorder import Recorder, oauth2_token_endpoint

OPERATOR_NAMESPACE = "fedid-system"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_serving_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a serving certificate for 127.0.0.1; returns (ca, cert, key) paths."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedid-e2e-serving-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedid")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, cert_path, key_path


@dataclass
class Operator:
    """One `fedid run` process serving HTTPS on loopback."""

    cluster: Cluster
    binary: Path
    workdir: Path
    namespace: str = OPERATOR_NAMESPACE
    name: str = "fedid"
    extra_args: list[str] = field(default_factory=list)
    kubeconfig: Path | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.ca, self.cert, self.key = write_serving_certificate(self.workdir)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.starts}.log"

    def issuer_url(self, name: str) -> str:
        return f"{self.base_url}/issuers/{name}"

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "run",
                "--namespace",
                self.namespace,
                "--http-addr",
                f"127.0.0.1:{self.port}",
                "--tls-cert-file",
                str(self.cert),
                "--tls-key-file",
                str(self.key),
                # Shorter bounds than production so that refreshes happen within a test.
                "--min-token-lifetime",
                "30s",
                "--renew-before-expiry",
                "5s",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **self.cluster.env(),
                **({"KUBECONFIG": str(self.kubeconfig)} if self.kubeconfig else {}),
                "RUST_LOG": "info,fedid=debug",
                "POD_NAME": self.name,
            },
        )
        wait_for("fedid /readyz", self._ready, timeout=60)

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"fedid exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}")
        return self.get("/readyz").status_code == 200

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 20 s); then this run's log must hold no JWT and no piece of a
        private key, whichever kubeconfig the operator ran with."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
        self.assert_log_holds_no_secret()

    def assert_log_holds_no_secret(self) -> None:
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        assert not jwts_in(log), f"a JWT appeared in the operator's log ({self.log_path}): {jwts_in(log)}"
        try:
            leaked = private_keys_in(self.cluster, log)
        except (AssertionError, ValueError, subprocess.SubprocessError):
            return  # kubectl failed (a test stopped the apiserver): no key rings to compare with
        assert not leaked, f"private key material in the operator's log ({self.log_path})"

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, no Lease release."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(f"{self.base_url}{path}", verify=str(self.ca), timeout=10, **kwargs)

    def logs(self) -> str:
        return "\n".join(
            (self.workdir / f"{self.name}-{n}.log").read_text(errors="replace") for n in range(1, self.starts + 1)
        )

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The value of one sample from /metrics (0 when the series does not exist)."""
        text = self.get("/metrics").text
        wanted = ",".join(f'{k}="{v}"' for k, v in (labels or {}).items())
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric_name, _, label_text = series.partition("{")
            if metric_name != name:
                continue
            if wanted and not all(part in label_text for part in wanted.split(",")):
                continue
            total += float(value)
        return total


def install_chart_service_account(
    cluster: Cluster, namespace: str, workdir: Path, release: str = "fedid", values: tuple[str, ...] = (),
    pods: bool = False,
) -> Path:
    """Installs the Helm chart (CRDs already applied) and returns a kubeconfig authenticated as
    its ServiceAccount, so that an out-of-cluster `fedid run` has exactly the chart's RBAC.

    `release` must contain "fedid" (then it is also the ServiceAccount's name); `values` are
    `--set` assignments. Unless `pods`, the release has `pods.enabled=false`: the chart's pod
    webhook (failurePolicy Fail, for labelled pods of every namespace) would be served by an
    in-cluster Service with no endpoints here, since fedid runs out of cluster, and would refuse
    other tests' pods; a later `helm upgrade --reuse-values` keeps it off. The ClusterRole is named after the release, so two releases in one
    cluster need two names."""
    helm = str(cluster.bin / "helm")
    if not pods:
        values = ("pods.enabled=false", *values)
    subprocess.run(
        [helm, "upgrade", "--install", release, str(REPO_ROOT / "charts" / "fedid"), "--namespace", namespace,
         "--create-namespace", "--skip-crds", "--wait=false", *(arg for value in values for arg in ("--set", value))],
        check=True, capture_output=True, text=True, env=cluster.env(), timeout=120,
    )
    token = cluster.kubectl("create", "token", release, "-n", namespace, "--duration=6h").stdout.strip()
    server = cluster.kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}").stdout
    kubeconfig = workdir / "service-account.kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": str(cluster.ca_file)}}],
                "users": [{"name": "fedid", "user": {"token": token}}],
                "contexts": [{"name": "fedid", "context": {"cluster": "e2e", "user": "fedid"}}],
                "current-context": "fedid",
            }
        )
    )
    return kubeconfig


@contextmanager
def chart_operator(cluster: Cluster, name: str, namespaces: Iterable[str],
                   extra_args: Iterable[str] = (), values: tuple[str, ...] = (), release: str = "fedid",
                   pods: bool = False, before_start: Callable[[], None] | None = None) -> Iterator[Operator]:
    """`fedid run` (named `name`) as the ServiceAccount of chart release `release` (installed with
    the `--set` assignments `values`, and `pods` as `install_chart_service_account` takes it),
    after fedid's CRDs are applied and `namespaces` exist, with a Lease of its own, and after
    `before_start` ran; stopped at the end, when its logs must hold no JWT."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/federatedidentities.fedid.dev", "--timeout=60s")
    for namespace in (OPERATOR_NAMESPACE, *namespaces):
        cluster.kubectl("create", "namespace", namespace, check=False)
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    service_account = install_chart_service_account(cluster, OPERATOR_NAMESPACE, workdir, release=release,
                                                    values=values, pods=pods)
    if before_start is not None:
        before_start()
    running = Operator(cluster=cluster, binary=fedid_binary(), workdir=workdir, kubeconfig=service_account,
                       name=name, extra_args=["--leader-election-lease-name", f"{name}-{uuid.uuid4().hex[:6]}",
                                              *extra_args])
    running.start()
    try:
        yield running
        # Private keys stay in their Secrets: not in metrics, status or any Event of the cluster.
        exposed = {
            "statuses": cluster.kubectl("get", "identityissuers,federatedidentities", "-A", "-o", "json").stdout,
            "Events": cluster.kubectl("get", "events", "-A", "-o", "json").stdout,
        }
        if running.process is not None and running.process.poll() is None:  # a test may have stopped it
            exposed["/metrics"] = running.get("/metrics").text
        leaks = {where: leaked for where, text in exposed.items() if (leaked := private_keys_in(cluster, text))}
        assert not leaks, f"private key material appeared in {sorted(leaks)}"
    finally:
        running.stop()
        logs = running.logs()
        assert not jwts_in(logs), f"a JWT appeared in the operator's logs ({running.log_path}): {jwts_in(logs)}"
        assert not private_keys_in(cluster, logs), f"private key material in the operator's logs ({running.log_path})"


@contextmanager
def replica_set(cluster: Cluster, operator_namespace: str, namespaces: Iterable[str], names: Iterable[str],
                issuer: str, allowed: Iterable[str], lease_seconds: int, prepublish: str = "2s",
                extra_args: Iterable[str] = ()) -> Iterator[dict[str, Operator]]:
    """Replicas `names` of `fedid run` (admin kubeconfig, a Lease of `lease_seconds` in
    `operator_namespace`), started after fedid's CRDs are applied and the namespaces exist, with
    an IdentityIssuer `issuer` (URL on the first replica) allowing `allowed`, Ready; all stopped,
    and the issuer and namespaces deleted, at the end."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    namespaces = [operator_namespace, *namespaces]
    for namespace in namespaces:
        cluster.kubectl("create", "namespace", namespace)
    workdir = Path(tempfile.mkdtemp(prefix=f"{operator_namespace}-"))
    args = ["--leader-election-lease-duration", f"{lease_seconds}s", *extra_args]
    operators = {name: Operator(cluster=cluster, binary=fedid_binary(), workdir=workdir,
                                namespace=operator_namespace, name=name, extra_args=list(args))
                 for name in names}
    for operator in operators.values():
        operator.start()
    first = next(iter(operators.values()))
    cluster.apply(json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "IdentityIssuer", "metadata": {"name": issuer},
        "spec": {"issuerURL": first.issuer_url(issuer), "signing": {"prepublishPeriod": prepublish},
                 "allowedNamespaces": {"names": list(allowed)}},
    }))
    cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{issuer}", "--timeout=60s")
    try:
        yield operators
    finally:
        for operator in operators.values():
            operator.stop()
        cluster.kubectl("delete", "identityissuer", issuer, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", *namespaces, "--wait=false", check=False)


def private_keys_in(cluster: Cluster, text: str) -> list[str]:
    """Pieces of the issuers' private keys (each base64 line of every key ring's PEM keys, as
    stored now in any namespace, and the PEM marker itself) that occur in `text`."""
    listed = json.loads(cluster.kubectl("get", "secrets", "-A", "-l", "fedid.dev/issuer",
                                        "-o", "json").stdout)["items"]
    pieces = ["PRIVATE KEY-----"]
    for secret in listed:
        encoded = (secret.get("data") or {}).get("keys.json")
        if not encoded:
            continue
        try:
            ring = json.loads(base64.b64decode(encoded))
        except ValueError:
            continue  # a key ring a test corrupted on purpose
        for key in ring.get("keys", []):
            pem = key.get("private_key_pem") or key.get("privateKeyPem") or ""
            pieces += [line for line in pem.splitlines() if len(line) >= 40 and "-----" not in line]
    return [piece for piece in pieces if piece in text]


def jwks_for(operator: Operator, issuer_url: str) -> dict:
    """Fetches discovery, then the JWKS it points to, over HTTPS like a cloud would."""
    discovery = requests.get(f"{issuer_url}/.well-known/openid-configuration", verify=str(operator.ca), timeout=10)
    discovery.raise_for_status()
    document = discovery.json()
    assert document["issuer"] == issuer_url
    keys = requests.get(document["jwks_uri"], verify=str(operator.ca), timeout=10)
    keys.raise_for_status()
    return keys.json()


def verify_token(operator: Operator, token: str, issuer_url: str, audience: str) -> dict:
    """Verifies a token with PyJWT against the JWKS the operator serves; returns its claims."""
    jwks = jwks_for(operator, issuer_url)
    header = jwt.get_unverified_header(token)
    keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(jwks).keys}
    assert header["kid"] in keys, f"kid {header['kid']} not in the served JWKS {sorted(keys)}"
    return jwt.decode(
        token,
        keys[header["kid"]].key,
        algorithms=[header["alg"]],
        audience=audience,
        issuer=issuer_url,
        options={"require": ["exp", "iat", "nbf", "iss", "sub", "aud", "jti"]},
    )


def secret_data(cluster: Cluster, namespace: str, name: str) -> dict:
    import base64

    secret = json.loads(cluster.kubectl("get", "secret", name, "-n", namespace, "-o", "json").stdout)
    secret["decoded"] = {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}
    return secret


def get_json(cluster: Cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def condition(obj: dict, kind: str = "Ready") -> dict | None:
    for entry in (obj.get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            return entry
    return None


def wait_for_reason(cluster: Cluster, namespace: str, name: str, reason: str, timeout: float = 60) -> dict:
    """Waits until the FederatedIdentity's Ready condition has `reason`; returns the identity."""

    def check() -> dict | None:
        identity = get_json(cluster, "federatedidentity", name, "-n", namespace)
        ready = condition(identity)
        return identity if ready and ready.get("reason") == reason else None

    return wait_for(f"fid/{name} in {namespace} to report {reason}", check, timeout=timeout)


def events_for(cluster: Cluster, namespace: str, name: str) -> list[dict]:
    result = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    )
    return json.loads(result.stdout)["items"]


def now() -> float:
    return time.time()


# A compact JWS: base64url JSON header (`{"` encodes as `eyJ`), claims, signature.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")


def jwts_in(text: str) -> list[str]:
    """The JWT-shaped strings in `text` (for asserting that logs hold none), each cut short."""
    return [found[:24] + "…" for found in _JWT.findall(text)]


def fedid_binary() -> Path:
    return Path(os.environ.get("FEDID_BIN", REPO_ROOT / "target" / "debug" / "fedid"))


@contextmanager
def token_service(directory: Path) -> Iterator[tuple[Recorder, str]]:
    """A recording OAuth 2.0 token endpoint (`peers.recorder.oauth2_token_endpoint`) over HTTPS
    with a certificate of its own in `directory`: the recorder and the CA's PEM."""
    ca, cert, key = write_serving_certificate(directory)
    with Recorder(cert, key, handler=oauth2_token_endpoint()) as recorder:
        yield recorder, ca.read_text()


def create_issuer(cluster: Cluster, operator: Operator, name: str, namespaces: Iterable[str]) -> None:
    """IdentityIssuer `name` served by `operator`, allowing `namespaces` by name, keys published
    at once (no prepublish period); returns once it is Ready. The apply is retried until the
    apiserver has the CRD's schema."""
    issuer = {
        "apiVersion": "fedid.dev/v1alpha1", "kind": "IdentityIssuer", "metadata": {"name": name},
        "spec": {"issuerURL": operator.issuer_url(name), "signing": {"prepublishPeriod": "0s"},
                 "allowedNamespaces": {"names": list(namespaces)}},
    }
    wait_for("the issuer to be accepted", lambda: cluster.apply(json.dumps(issuer)).returncode == 0)
    cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{name}", "--timeout=60s")


def identity_manifest(namespace: str, name: str, issuer: str, audience: str = "sts.example.com",
                      **spec: object) -> dict:
    """A FederatedIdentity of `issuer` for `audience`, with any other `spec` fields."""
    return {
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"issuerRef": issuer, "audiences": [audience], **spec},
    }


def jwks_served_by_any(operators: Iterable[Operator], issuer: str) -> bool:
    """Whether some running operator of `operators` answers with `issuer`'s JWKS, keys in it."""
    for operator in operators:
        if operator.process is None or operator.process.poll() is not None:
            continue
        try:
            if operator.get(f"/issuers/{issuer}/.well-known/jwks.json").json()["keys"]:
                return True
        except Exception:  # noqa: BLE001 - this one not answering; another may
            continue
    return False


# The chart README's sections with the rights tables.
CLUSTER_WIDE_RIGHTS = "### Every namespace (the default)"
LISTED_NAMESPACES_RIGHTS = "### Listed namespaces only (`watchNamespaces`)"


def documented_rights(section: str, release: str, namespaces: Iterable[str] = ()) -> dict[str, set[tuple[str, str, str]]]:
    """Per scope (the table's first column), the (resource.group, resource name or "", verb)
    rows of the rights table under heading `section` of the chart README, for a release named
    `release` with pods.enabled, leader election, no cert-manager and no rollout (rows marked
    *rollout* are left out). A row of resources "named in watchNamespaces" holds one entry per
    name of `namespaces`, as `kubectl auth can-i --list` prints them (a row per name)."""
    rights: dict[str, set[tuple[str, str, str]]] = {}
    lines = (REPO_ROOT / "charts" / "fedid" / "README.md").read_text().splitlines()
    start = lines.index(section)
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("scope", "---") or "*rollout*" in cells[4]:
            continue
        group = cells[1].strip("`")
        group = "" if group == "core" else group
        names = [""]
        if "named `<fullname>`" in cells[2]:
            names = [release]
        elif "named in `watchNamespaces`" in cells[2]:
            names = list(namespaces)
        for resource in re.findall(r"`([a-z/]+)`", cells[2]):
            base, _, subresource = resource.partition("/")
            # kubectl's spelling: resource.group/subresource
            spelled = (f"{base}.{group}" if group else base) + (f"/{subresource}" if subresource else "")
            for verb in (verb.strip() for verb in cells[3].split(",")):
                for name in names:
                    rights.setdefault(cells[0], set()).add((spelled, name, verb))
    return rights


def can_i_list(cluster: Cluster, subject: str, namespace: str) -> set[tuple[str, str, str]]:
    """(resource, resource names or "", verb) rows of `kubectl auth can-i --list`, without what
    every authenticated user may do (self reviews, non-resource URLs)."""
    listed = cluster.kubectl("auth", "can-i", "--list", "-n", namespace, f"--as={subject}").stdout
    rights = set()
    for line in listed.splitlines()[1:]:
        match = re.match(r"^(\S+)\s+(\[[^\]]*\])\s+(\[[^\]]*\])\s+\[([^\]]*)\]\s*$", line)
        if not match or match.group(2) != "[]":
            continue  # non-resource URLs (/api, /healthz, ...)
        resource, names, verbs = match.group(1), match.group(3).strip("[]"), match.group(4).split()
        if resource.startswith("self"):
            continue  # selfsubjectaccessreviews and friends: every user's
        for verb in verbs:
            rights.add((resource, names, verb))
    return rights
