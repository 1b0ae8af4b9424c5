"""The guides in docs/guides/, tested as written: every fenced ```yaml block (and the JSON policy
blocks, the trust settings in the ```sh commands, the ```python SDK snippets) is read out of the
markdown and applied, run or evaluated here, so a wrong field in a guide fails a test.

One `fedid run` (with its pod server and a webhook registered at the real apiserver, as in
test_pods_exchange.py) serves the issuer the guides create. The guides' example values are replaced
by the test's, and these are the only changes made to what a guide says:

- text substitutions: the issuer URL `https://fedid.example.com/clusters/prod` (and its host and
  path, the AWS condition keys' prefix) by fedid's `https://127.0.0.1:<port>/clusters/prod`; each
  token service's URL by its loopback stand-in: aws `https://sts.eu-west-1.amazonaws.com/` and the
  role ARNs of account 111122223333 (MinIO's role ARN), vault `https://vault.example.com:8200`,
  gcp `https://sts.googleapis.com` and `https://iamcredentials.googleapis.com`, azure
  `https://login.microsoftonline.com`, oauth2 `https://dex.example.com/dex`;
- fields set on an identity where the guide relies on fedid's default endpoint: aws `stsEndpoint`,
  gcp `tokenURL` and `impersonationURL`, azure `authorityHost` (all pointing at the stand-ins);
- the issuer also allows namespace OTHER_NS, so that tokens of another namespace exist to be refused;
- a pod's mount path `/var/run/secrets/fedid` is a temporary directory holding the Secret's keys
  (file contents that name the mount path name that directory), and the SDK snippets also get the
  stand-in's URL or CA where the real cloud needs none (AWS_ENDPOINT_URL, AWS_CA_BUNDLE,
  REQUESTS_CA_BUNDLE, AZURE_AUTHORITY_HOST, SSL_CERT_FILE).

The stand-ins (MinIO's STS, OpenBao, Dex, the recording GCP and Entra services) serve one
certificate from a test CA that fedid trusts as a system root (SSL_CERT_FILE, which rustls reads
through rustls-native-certs), so the guides' identities need no `caBundle`, as with the real clouds.

- aws: MinIO is the STS (it validates the token against fedid's JWKS, as AWS does); boto3 runs the
  guide's snippet with only the Secret's files; the trust policy's `StringEquals`/`StringLike`
  conditions are evaluated the way IAM does against minted tokens (MinIO does not evaluate trust
  policies); the per-pod variant through the webhook.
- gcp: the provider's attribute mapping and condition from the guide's gcloud command, evaluated
  with cel-python, decide at a recording STS + IAM Credentials stand-in (as in test_exchange.py);
  google-auth runs the guide's snippet with the Secret's external_account.json.
- azure: the federated identity credential JSON, enforced by an Entra stand-in; azure-identity's
  WorkloadIdentityCredential with the pod's environment, and the webhook's for the per-pod variant.
- vault: the guide's `vault` commands run by OpenBao's CLI against a real OpenBao; hvac runs the
  guide's snippet with the Secret's `vault-token`; the per-pod role bound to the pipeline claim.
- oauth2: Dex with the guide's connector and client; the guide's snippet verifies Dex's access
  token against Dex's JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import boto3
import jwt
import pytest
import requests
import yaml

from conftest import REPO_ROOT, Cluster, wait_for
from fedid_harness import (
    Operator,
    condition,
    fedid_binary,
    free_port,
    get_json,
    jwts_in,
    secret_data,
    verify_token,
    wait_for_reason,
    write_serving_certificate,
)
from peers.recorder import Recorded, Recorder, Reply
from test_exchange_openbao import OpenBao, bao_binary, secret_keys
from test_exchange_peers import Peer, peers_bin
from test_pods import env_of, event, mounts_of, secret_name_of, volumes_of

GUIDES = REPO_ROOT / "docs" / "guides"
RUN = uuid.uuid4().hex[:6]
OPERATOR_NS = f"fedid-guides-{RUN}"
WEBHOOK = f"fedid-guides-{RUN}"
# The webhook only sees namespaces with this label, so it never touches other modules' pods.
RUN_LABEL = "fedid-e2e/guides-run"
# The example issuer URL of every guide, and the mount path the guides' pods use.
GUIDE_ISSUER = "https://fedid.example.com/clusters/prod"
MOUNT = "/var/run/secrets/fedid"
# A namespace that no guide allows, added to the issuer so that a token of another namespace exists.
OTHER_NS = "ci-other"
SYSTEM_ROOTS = Path("/etc/ssl/certs/ca-certificates.crt")


# --- reading the guides ------------------------------------------------------------------------


def guide(name: str) -> str:
    return (GUIDES / f"{name}.md").read_text()


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of `language` in a markdown text, in order."""
    return [match.group(1) for match in re.finditer(rf"^```{language}\n(.*?)^```$", text, re.S | re.M)]


def substitute(text: str, substitutions: list[tuple[str | re.Pattern, str]]) -> str:
    for old, new in substitutions:
        text = old.sub(new, text) if isinstance(old, re.Pattern) else text.replace(old, new)
    return text


def documents(text: str) -> list[dict]:
    """Every YAML document of every ```yaml block."""
    return [doc for block in blocks(text, "yaml") for doc in yaml.safe_load_all(block) if doc]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in the guide, found {len(found)}"
    return found[0]


def commands(text: str, program: str) -> list[list[str]]:
    """The commands of the ```sh blocks that start with `program` (e.g. `kubectl wait`), split as the
    shell would (continuation lines joined)."""
    found = []
    for block in blocks(text, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith(program):
                found.append(shlex.split(line, comments=True))
    return found


def option(command: list[str], name: str) -> str:
    """The value of `--name=value` or `--name value` in a split command."""
    for index, word in enumerate(command):
        if word == name:
            return command[index + 1]
        if word.startswith(f"{name}="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{name} not in {command}")


# --- the environment: fedid with its pod server, trusting the stand-ins' CA ---------------------


@dataclass
class TrustingCluster(Cluster):
    """The session's cluster, with extra environment for the processes started with its env()."""

    extra: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra}


@dataclass
class Env:
    cluster: Cluster
    operator: Operator
    workdir: Path
    peer_ca: Path
    peer_cert: Path
    peer_key: Path
    trust: Path  # system roots + the stand-ins' CA + fedid's CA, for the peers and SDKs
    plugin_path: str

    @property
    def issuer_url(self) -> str:
        return f"{self.operator.base_url}/clusters/prod"

    @property
    def issuer_host_path(self) -> str:
        return self.issuer_url.removeprefix("https://")

    def base_substitutions(self) -> list[tuple[str | re.Pattern, str]]:
        # The full URL first: its host and path alone are the AWS condition keys' prefix.
        return [(GUIDE_ISSUER, self.issuer_url), (GUIDE_ISSUER.removeprefix("https://"), self.issuer_host_path)]


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
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "reinvocationPolicy": "IfNeeded", "timeoutSeconds": 10,
        }],
    })


@pytest.fixture(scope="module")
def env(cluster: Cluster) -> Iterator[Env]:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    for crd in ("identityissuers.fedid.dev", "federatedidentities.fedid.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    cluster.kubectl("create", "namespace", OPERATOR_NS)
    workdir = Path(tempfile.mkdtemp(prefix="fedid-e2e-guides-"))
    peers = workdir / "peers"
    peers.mkdir()
    peer_ca, peer_cert, peer_key = write_serving_certificate(peers)
    fedid_trust = workdir / "fedid-trust.pem"
    fedid_trust.write_text(SYSTEM_ROOTS.read_text() + peer_ca.read_text())
    pod_port = free_port()
    cluster.apply(webhook_manifest(pod_port))
    operator = Operator(
        cluster=TrustingCluster(dir=cluster.dir, bin=cluster.bin, extra={"SSL_CERT_FILE": str(fedid_trust)}),
        binary=fedid_binary(), workdir=workdir, namespace=OPERATOR_NS, name="guides",
        extra_args=["--pod-server-addr", f"127.0.0.1:{pod_port}", "--pod-tls-hosts", "127.0.0.1",
                    "--webhook-configuration", WEBHOOK],
    )
    trust = workdir / "trust.pem"
    trust.write_text(fedid_trust.read_text() + operator.ca.read_text())
    plugins = workdir / "plugins"
    plugins.mkdir()
    (plugins / "kubectl-fedid").symlink_to(fedid_binary().resolve())
    try:
        operator.start()
        tls = wait_for("the pod server's certificate", lambda: secret_data(cluster, OPERATOR_NS, "fedid-pod-server-tls"))
        wait_for("fedid to set the webhook's caBundle", lambda: all(
            (bundle := hook["clientConfig"].get("caBundle")) and base64.b64decode(bundle).decode() == tls["decoded"]["ca.crt"]
            for hook in get_json(cluster, "mutatingwebhookconfiguration", WEBHOOK)["webhooks"]))
        yield Env(cluster=cluster, operator=operator, workdir=workdir, peer_ca=peer_ca, peer_cert=peer_cert,
                  peer_key=peer_key, trust=trust, plugin_path=f"{plugins}{os.pathsep}{cluster.env()['PATH']}")
    finally:
        operator.stop()
        cluster.kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK, "--ignore-not-found", check=False)
        # The guides' names (issuer `ci`, namespaces ci-web, ...) are fixed, and other modules use
        # some of them: wait until they are gone.
        cluster.kubectl("delete", "identityissuer", "ci", "--ignore-not-found", "--timeout=60s", check=False)
        names = [n["metadata"]["name"] for n in get_json(cluster, "namespaces", "-l", f"{RUN_LABEL}={RUN}")["items"]]
        cluster.kubectl("delete", "namespace", OPERATOR_NS, "--wait=false", check=False)
        if names:
            cluster.kubectl("delete", "namespace", *names, "--timeout=120s", check=False)
        logs = operator.logs()
        assert "PRIVATE KEY" not in logs
        assert not jwts_in(logs), f"a JWT appeared in the operator's logs: {jwts_in(logs)}"


def apply_docs(env: Env, docs: list[dict]) -> None:
    """Applies guide objects; namespaces get the run's label (so the webhook sees their pods)."""
    for doc in docs:
        if doc["kind"] == "Namespace":
            doc = {**doc, "metadata": {**doc["metadata"], "labels": {**doc["metadata"].get("labels", {}), RUN_LABEL: RUN}}}
            env.cluster.apply(json.dumps(doc))
            name = doc["metadata"]["name"]
            wait_for(f"the default ServiceAccount of {name}", lambda: env.cluster.kubectl(
                "get", "serviceaccount", "default", "-n", name, check=False).returncode == 0)
        else:
            result = env.cluster.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
            assert result.returncode == 0, f"the guide's {doc['kind']} {doc['metadata']['name']} was refused: {result.stderr}"


def use_issuer(env: Env, docs: list[dict]) -> dict:
    """Applies the guide's IdentityIssuer (allowing OTHER_NS too) and waits for it as the guide says."""
    issuer = json.loads(json.dumps(one(docs, "IdentityIssuer")))
    assert issuer["metadata"]["name"] == "ci" and issuer["spec"]["issuerURL"] == env.issuer_url
    issuer["spec"]["allowedNamespaces"]["names"].append(OTHER_NS)
    # The guides' identities name no issuer: a second default issuer would make theirs ambiguous.
    defaults = [i["metadata"]["name"] for i in get_json(env.cluster, "identityissuers")["items"]
                if (i["metadata"].get("annotations") or {}).get("fedid.dev/default-issuer") == "true"
                and i["metadata"]["name"] != "ci"]
    assert not defaults, f"another module left default issuers behind: {defaults}"
    apply_docs(env, [issuer, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OTHER_NS}}])
    env.cluster.kubectl("wait", "--for=condition=Ready", "identityissuer/ci", "--timeout=60s")
    return issuer


def run_kubectl(env: Env, command: list[str], timeout: float = 180) -> str:
    """A `kubectl ...` command of a guide, run by the cluster's kubectl (with the plugin on PATH)."""
    assert command[0] == "kubectl", command
    result = subprocess.run([str(env.cluster.bin / "kubectl"), *command[1:]], capture_output=True, text=True,
                            timeout=timeout, env={**env.cluster.env(), "PATH": env.plugin_path,
                                                  "SSL_CERT_FILE": str(env.trust)})
    assert result.returncode == 0, f"{shlex.join(command)} failed ({result.returncode}): {result.stderr}"
    return result.stdout


def check_commands(env: Env, text: str, namespace: str, identity: str) -> None:
    """Runs the guide's `kubectl wait` and `kubectl fedid status` commands for `identity`; the status
    shows the token verified against the JWKS fedid serves."""
    waits = [c for c in commands(text, "kubectl wait") if f"fid/{identity}" in c]
    assert waits, f"the guide has no `kubectl wait` for fid/{identity}"
    for command in waits:
        run_kubectl(env, command)
    [status] = [c for c in commands(text, "kubectl fedid status") if f"fid/{identity}" in c]
    shown = json.loads(run_kubectl(env, [*status, "-o", "json"]))
    assert shown["verification"]["result"] == "verified", shown["verification"]
    assert '"Exchanged"' in json.dumps(shown), "the status shows the last exchange's outcome"
    assert condition(get_json(env.cluster, "fid", identity, "-n", namespace), "CredentialsFresh")["status"] == "True"


def mount_secret(env: Env, files: dict[str, str], name: str) -> Path:
    """What a pod sees at MOUNT: the Secret's keys as files, here in a directory of their own; file
    contents that name MOUNT (aws `config`, gcp `external_account.json`) name that directory."""
    directory = env.workdir / f"mount-{name}-{uuid.uuid4().hex[:4]}"
    directory.mkdir()
    for key, value in files.items():
        (directory / key).write_text(value.replace(f"{MOUNT}/", f"{directory}/"))
    return directory


def run_snippet(code: str, child_env: dict[str, str], timeout: float = 120) -> str:
    """A guide's ```python snippet in a fresh interpreter with only `child_env` besides PATH/HOME."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
    with tempfile.TemporaryDirectory(prefix="fedid-e2e-snippet-") as home:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                                env={**base, "HOME": home, **child_env})
    assert result.returncode == 0, f"the guide's snippet failed:\n{result.stderr[-3000:]}"
    return result.stdout


def pod_container_env(pod: dict, files_dir: Path) -> dict[str, str]:
    """The environment of the pod's first container, with MOUNT mapped to `files_dir`."""
    [container, *_] = pod["spec"]["containers"]
    return {name: value.replace(MOUNT, str(files_dir)) for name, value in env_of(container).items()}


def check_pod_mounts_secret(pod: dict, secret_name: str, mount_path: str = MOUNT) -> None:
    """The guide's pod mounts `secret_name` at `mount_path` in every container."""
    volumes = {name: volume for name, volume in volumes_of(pod).items() if volume.get("secret")}
    [volume] = [name for name, v in volumes.items() if v["secret"]["secretName"] == secret_name]
    for container in pod["spec"]["containers"]:
        assert mounts_of(container)[volume]["mountPath"] == mount_path, container["name"]


def token_claims(env: Env, token: str, audience: str) -> dict:
    return verify_token(env.operator, token, env.issuer_url, audience)


def identity_token(env: Env, namespace: str, name: str, audiences: list[str]) -> dict:
    """Claims of a token fedid minted for a plain identity (no exchange) that no guide has."""
    env.cluster.apply(json.dumps({"apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
                                  "metadata": {"name": name, "namespace": namespace},
                                  "spec": {"audiences": audiences, "lifetime": "15m"}}))
    env.cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", namespace, "--timeout=60s")
    token = secret_data(env.cluster, namespace, f"{name}-token")["decoded"]["token"]
    return token_claims(env, token, audiences[0])


def delete_identity(env: Env, namespace: str, name: str) -> None:
    """Deletes an identity and waits until its Secret is garbage-collected, so that a later test may
    create an identity of the same name (a leftover Secret would be another identity's)."""
    env.cluster.kubectl("delete", "fid", name, "-n", namespace, "--ignore-not-found")
    wait_for(f"Secret {name}-token in {namespace} to be deleted", lambda: env.cluster.kubectl(
        "get", "secret", f"{name}-token", "-n", namespace, "--ignore-not-found", "-o", "name").stdout.strip() == "")


def helm_template(env: Env, text: str) -> None:
    """The guide's `helm install` arguments render (values.schema.json checks every value)."""
    [install] = commands(text, "helm install")
    assert install[:4] == ["helm", "install", "fedid", "charts/fedid"], install
    result = subprocess.run([str(env.cluster.bin / "helm"), "template", "fedid", str(REPO_ROOT / "charts" / "fedid"),
                             *install[4:]], capture_output=True, text=True, env=env.cluster.env(), timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    for rollout in commands(text, "kubectl rollout status"):
        kind, name = rollout[3].split("/")
        assert kind == "deployment" and option(rollout, "-n") == option(install, "-n")
        one(rendered, "Deployment", name)
    if "ingress.enabled=true" in install:
        ingress = one(rendered, "Ingress")
        [rule] = ingress["spec"]["rules"]
        host, path = GUIDE_ISSUER.removeprefix("https://").split("/", 1)
        assert rule["host"] == host and rule["http"]["paths"][0]["path"] == f"/{path}", rule


# --- IAM condition evaluation -------------------------------------------------------------------


def iam_like(pattern: str, value: str) -> bool:
    """IAM's StringLike: `*` any run of characters, `?` one character, everything else literal,
    case-sensitive."""
    return re.fullmatch("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
                        value, re.S) is not None


def iam_conditions_allow(conditions: dict, key_prefix: str, claims: dict) -> bool:
    """Whether a trust policy's Condition block allows a web identity token with `claims`: every
    operator and every key must match (AND); a key matches when the request value equals (or, for
    StringLike, matches) any of the listed values (OR); a key the token lacks fails. The keys are
    `<issuer host/path>:<claim>`; only StringEquals and StringLike appear in the guides."""
    for operator, entries in conditions.items():
        assert operator in ("StringEquals", "StringLike"), f"operator {operator} is not evaluated here"
        for key, wanted in entries.items():
            assert key.startswith(f"{key_prefix}:"), f"condition key {key} is not the provider's"
            claim = key.removeprefix(f"{key_prefix}:")
            assert claim in ("sub", "aud"), f"{key}: AWS offers the provider's :sub and :aud keys"
            value = claims.get(claim)
            if value is None:
                return False
            values = value if isinstance(value, list) else [value]
            patterns = wanted if isinstance(wanted, list) else [wanted]
            match = iam_like if operator == "StringLike" else str.__eq__
            if not any(match(p, v) for p in patterns for v in values):
                return False
    return True


# --- aws -----------------------------------------------------------------------------------------

AWS_ACCOUNT_ROLE = re.compile(r"arn:aws:iam::111122223333:role/[\w+=,.@-]+")
AWS_STS = "https://sts.eu-west-1.amazonaws.com/"
AWS_AUDIENCE = "sts.amazonaws.com"
AWS_BUCKET = "ci-web-artifacts"


@pytest.fixture(scope="module")
def aws(env: Env) -> Iterator[dict]:
    """The aws guide's issuer, then MinIO as its STS (MinIO reads the discovery document at start)
    with the guide's audience as its client ID; the guide's text with the test's values."""
    bins = peers_bin()
    minio_port, console_port = free_port(), free_port()
    endpoint = f"https://127.0.0.1:{minio_port}"
    digest = base64.urlsafe_b64encode(hashlib.sha1(AWS_AUDIENCE.encode()).digest()).decode().rstrip("=")
    role = f"arn:minio:iam:::role/{digest}"
    text = substitute(guide("aws"), [*env.base_substitutions(), (AWS_STS, f"{endpoint}/"), (AWS_ACCOUNT_ROLE, role)])
    docs = documents(text)
    use_issuer(env, docs)
    minio_dir = env.workdir / "minio"
    certs = minio_dir / "certs"
    (certs / "CAs").mkdir(parents=True)
    shutil.copy(env.peer_cert, certs / "public.crt")
    shutil.copy(env.peer_key, certs / "private.key")
    shutil.copy(env.operator.ca, certs / "CAs" / "fedid.crt")
    minio = Peer("minio", [str(bins / "minio"), "server", str(minio_dir / "data"), "--address", f"127.0.0.1:{minio_port}",
                           "--console-address", f"127.0.0.1:{console_port}", "--certs-dir", str(certs)], minio_dir, {
        "MINIO_ROOT_USER": "fedid-admin", "MINIO_ROOT_PASSWORD": "fedid-admin-password",
        "MINIO_IDENTITY_OPENID_CONFIG_URL": f"{env.issuer_url}/.well-known/openid-configuration",
        "MINIO_IDENTITY_OPENID_CLIENT_ID": AWS_AUDIENCE, "MINIO_IDENTITY_OPENID_ROLE_POLICY": "readwrite",
        "MINIO_BROWSER": "off", "MINIO_UPDATE": "off",
    })
    try:
        wait_for("MinIO to be live", lambda: minio.alive() and requests.get(
            f"{endpoint}/minio/health/live", verify=str(env.peer_ca), timeout=5).status_code == 200, timeout=120)
        admin = boto3.client("s3", endpoint_url=endpoint, verify=str(env.peer_ca), region_name="us-east-1",
                             aws_access_key_id="fedid-admin", aws_secret_access_key="fedid-admin-password")
        admin.create_bucket(Bucket=AWS_BUCKET)
        yield {"text": text, "docs": docs, "endpoint": endpoint, "role": role}
    finally:
        minio.stop()


def aws_trust_policy_of(text: str) -> dict:
    [policy] = [json.loads(block) for block in blocks(text, "json") if "sts:AssumeRoleWithWebIdentity" in block]
    [statement] = policy["Statement"]
    return statement


def aws_trust_policy(env: Env, text: str) -> dict:
    statement = aws_trust_policy_of(text)
    assert statement["Effect"] == "Allow" and statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    # The provider the role trusts is the one create-open-id-connect-provider made for the issuer URL.
    assert statement["Principal"]["Federated"].endswith(f":oidc-provider/{env.issuer_host_path}")
    return statement


def test_aws_guide_install_and_provider_commands_match_the_issuer(env: Env, aws: dict) -> None:
    text, docs = aws["text"], aws["docs"]
    helm_template(env, text)
    [provider] = commands(text, "aws iam create-open-id-connect-provider")
    identity = one(docs, "FederatedIdentity", "deploy")
    assert option(provider, "--url") == env.issuer_url == one(docs, "IdentityIssuer")["spec"]["issuerURL"]
    assert option(provider, "--client-id-list").split(",") == identity["spec"]["audiences"]
    [role] = commands(text, "aws iam create-role")
    assert option(role, "--assume-role-policy-document") == "file://trust-policy.json"
    # The role created is the one the identity assumes, in the provider's account.
    original = documents(guide("aws"))
    role_arn = one(original, "FederatedIdentity", "deploy")["spec"]["exchange"]["aws"]["roleARN"]
    [created] = commands(guide("aws"), "aws iam create-role")
    account = aws_trust_policy_of(guide("aws"))["Principal"]["Federated"].split(":")[4]
    assert role_arn == f"arn:aws:iam::{account}:role/{option(created, '--role-name')}"
    # Without stsEndpoint, fedid uses the region's endpoint: the guide's issuer must allow it.
    region = identity["spec"]["exchange"]["aws"]["region"]
    allowed = one(documents(guide("aws")), "IdentityIssuer")["spec"]["exchange"]["allowedEndpoints"]
    assert f"https://sts.{region}.amazonaws.com/" in allowed
    assert "stsEndpoint" not in identity["spec"]["exchange"]["aws"]


@pytest.fixture(scope="module")
def aws_deploy(env: Env, aws: dict) -> dict:
    """The guide's identity `deploy` applied, and the guide's wait and status commands passed."""
    docs = aws["docs"]
    identity = json.loads(json.dumps(one(docs, "FederatedIdentity", "deploy")))
    # The one change to the guide's identity: MinIO on loopback instead of the region's STS.
    identity["spec"]["exchange"]["aws"]["stsEndpoint"] = f"{aws['endpoint']}/"
    apply_docs(env, [one(docs, "Namespace", "ci-web"), identity])
    check_commands(env, aws["text"], "ci-web", "deploy")
    return secret_data(env.cluster, "ci-web", "deploy-token")["decoded"]


def test_aws_guide_identity_gets_minio_credentials_and_boto3_uses_only_the_secrets_files(
    env: Env, aws: dict, aws_deploy: dict
) -> None:
    text, docs, files = aws["text"], aws["docs"], aws_deploy
    assert {"token", "expires-at", "credentials", "credential-process.json", "config"} <= set(files)
    assert f"credential_process = cat {MOUNT}/credential-process.json" in files["config"]
    assert "region = eu-west-1" in files["config"]
    claims = token_claims(env, files["token"], AWS_AUDIENCE)
    assert claims["sub"] == "system:fedid:ci-web:deploy" and claims["iss"] == env.issuer_url

    # The guide's pod mounts that Secret where `config` points, and sets AWS_CONFIG_FILE to it.
    pod = one(docs, "Pod", "deploy-job")
    check_pod_mounts_secret(pod, "deploy-token")
    created = json.loads(env.cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(pod)).stdout)
    assert env_of(created["spec"]["containers"][0])["AWS_CONFIG_FILE"] == f"{MOUNT}/config"
    mount = mount_secret(env, files, "aws")
    child = {**pod_container_env(pod, mount), "AWS_SHARED_CREDENTIALS_FILE": str(mount / "absent"),
             # MinIO on loopback stands in for AWS: its URL and its CA.
             "AWS_ENDPOINT_URL": aws["endpoint"], "AWS_CA_BUNDLE": str(env.peer_ca)}
    [snippet] = blocks(text, "python")
    output = run_snippet(snippet, child)
    access_key = json.loads(files["credential-process.json"])["AccessKeyId"]
    assert f"access key {access_key}" in output, output
    assert AWS_BUCKET in output, output


def test_aws_trust_policy_conditions_match_the_identitys_token_and_no_other(
    env: Env, aws: dict, aws_deploy: dict
) -> None:
    text = aws["text"]
    statement = aws_trust_policy(env, text)
    prefix = env.issuer_host_path
    mine = token_claims(env, aws_deploy["token"], AWS_AUDIENCE)
    sibling = identity_token(env, "ci-web", "deploy-staging", [AWS_AUDIENCE])
    elsewhere = identity_token(env, OTHER_NS, "deploy", [AWS_AUDIENCE])
    wrong_audience = identity_token(env, "ci-web", "deploy-audience", ["sts.example.com"])
    conditions = statement["Condition"]
    assert iam_conditions_allow(conditions, prefix, mine)
    assert not iam_conditions_allow(conditions, prefix, sibling)
    assert not iam_conditions_allow(conditions, prefix, elsewhere)

    # The table's variants: one identity, and every identity of the namespace.
    variants = {}
    for row in re.finditer(r"^\| (one identity|every identity of a namespace)[^|]*\| `(.*)` \|$", text, re.M):
        snippet = json.loads("{" + row.group(2).replace("…:", f"{prefix}:") + "}")
        # The row's `sub` condition in place of the policy's, the policy's `aud` condition kept.
        variant = {op: {k: v for k, v in entries.items() if not k.endswith(":sub")} for op, entries in conditions.items()}
        for op, entries in snippet.items():
            variant.setdefault(op, {}).update(entries)
        variants[row.group(1)] = {op: entries for op, entries in variant.items() if entries}
    assert set(variants) == {"one identity", "every identity of a namespace"}
    assert variants["one identity"] == conditions
    namespace_wide = variants["every identity of a namespace"]
    assert iam_conditions_allow(namespace_wide, prefix, mine)
    assert iam_conditions_allow(namespace_wide, prefix, sibling)
    assert not iam_conditions_allow(namespace_wide, prefix, elsewhere)
    # The aud condition holds in every variant: a token for another audience is never allowed.
    for variant in (conditions, namespace_wide):
        assert not iam_conditions_allow(variant, prefix, {**wrong_audience, "sub": mine["sub"]})
    for namespace, name in (("ci-web", "deploy-staging"), (OTHER_NS, "deploy"), ("ci-web", "deploy-audience")):
        delete_identity(env, namespace, name)


def test_aws_guide_per_pod_variant_gives_the_tekton_pod_its_own_credentials(env: Env, aws: dict) -> None:
    text, docs = aws["text"], aws["docs"]
    identity = json.loads(json.dumps(one(docs, "FederatedIdentity", "deploy-pipeline")))
    identity["spec"]["exchange"]["aws"]["stsEndpoint"] = f"{aws['endpoint']}/"
    apply_docs(env, [one(docs, "Namespace", "ci-web"), one(docs, "ServiceAccount", "tekton-ci"), identity])
    [wait] = [c for c in commands(text, "kubectl wait") if "fid/deploy-pipeline" in c]
    run_kubectl(env, wait)
    pod = one(docs, "Pod", "release-x7k2p-deploy-pod")
    env.cluster.apply(json.dumps(pod))
    [get] = [c for c in commands(text, "kubectl get pod") if pod["metadata"]["name"] in c]
    secret_name = run_kubectl(env, get).strip()
    assert re.fullmatch(r"deploy-pipeline-[a-z0-9]{8}", secret_name), secret_name
    created = get_json(env.cluster, "pod", pod["metadata"]["name"], "-n", "ci-web")
    assert secret_name_of(created) == secret_name
    check_pod_mounts_secret(created, secret_name)
    container_env = env_of(created["spec"]["containers"][0])
    assert container_env["AWS_CONFIG_FILE"] == f"{MOUNT}/config"
    secret = wait_for(f"the pod's Secret {secret_name}", lambda: (
        s if {"token", "credential-process.json"} <= set((s := secret_data(env.cluster, "ci-web", secret_name))["decoded"])
        else None), timeout=90)
    claims = token_claims(env, secret["decoded"]["token"], AWS_AUDIENCE)
    assert claims["sub"] == "system:fedid:ci-web:deploy-pipeline" and "system:fedid:ci-web:deploy-pipeline" in text
    assert (claims["pod"], claims["service_account"]) == (pod["metadata"]["name"], "tekton-ci")
    assert (claims["pipeline"], claims["job"], claims["run_id"]) == ("release", "release-x7k2p-deploy", "release-x7k2p")
    # The step 4 policy shape, written for this identity, allows this pod's token.
    statement = aws_trust_policy(env, text)
    conditions = json.loads(json.dumps(statement["Condition"]).replace(
        "system:fedid:ci-web:deploy", "system:fedid:ci-web:deploy-pipeline"))
    assert iam_conditions_allow(conditions, env.issuer_host_path, claims)
    mount = mount_secret(env, secret["decoded"], "aws-pod")
    child = {k: v.replace(MOUNT, str(mount)) for k, v in container_env.items() if k.startswith("AWS_")}
    child.update({"AWS_SHARED_CREDENTIALS_FILE": str(mount / "absent"), "AWS_ENDPOINT_URL": aws["endpoint"],
                  "AWS_CA_BUNDLE": str(env.peer_ca)})
    [snippet] = blocks(text, "python")
    output = run_snippet(snippet, child)
    assert f"access key {json.loads(secret['decoded']['credential-process.json'])['AccessKeyId']}" in output

    wait_for("the pod's Issued Event", lambda: event(env.cluster, "ci-web", pod["metadata"]["name"], "Issued", "Normal"))
    # A pod without the pipeline label gets no token: a MissingPodClaim Warning, no Secret.
    unlabelled = json.loads(json.dumps(pod))
    unlabelled["metadata"]["name"] = "no-pipeline"
    del unlabelled["metadata"]["labels"]["tekton.dev/pipeline"]
    created = json.loads(env.cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(unlabelled)).stdout)
    warning = wait_for("the MissingPodClaim Warning", lambda: event(env.cluster, "ci-web", "no-pipeline",
                                                                    "MissingPodClaim", "Warning"))
    assert "tekton.dev/pipeline" in warning["message"], warning["message"]
    assert "token" not in secret_keys(env.cluster, "ci-web", secret_name_of(created))

    # A pod of another service account, labelled for the identity, is refused by the webhook.
    intruder = json.loads(json.dumps(pod))
    intruder["metadata"]["name"] = "by-hand"
    intruder["spec"]["serviceAccountName"] = "default"
    refused = env.cluster.kubectl("create", "-f", "-", input=json.dumps(intruder), check=False)
    assert refused.returncode != 0 and "tekton-ci" in refused.stderr + refused.stdout, refused.stderr


# --- vault ---------------------------------------------------------------------------------------

VAULT_ADDRESS = "https://vault.example.com:8200"


@pytest.fixture(scope="module")
def openbao(env: Env) -> Iterator[OpenBao]:
    """A real OpenBao on loopback (TLS with the stand-ins' certificate, in-memory storage),
    initialised and unsealed, trusting fedid's CA as a system root."""
    import hvac

    workdir = env.workdir / "openbao"
    workdir.mkdir()
    port, cluster_port = free_port(), free_port()
    (workdir / "config.hcl").write_text(textwrap.dedent(f"""\
        storage "inmem" {{}}
        listener "tcp" {{
          address         = "127.0.0.1:{port}"
          cluster_address = "127.0.0.1:{cluster_port}"
          tls_cert_file   = "{env.peer_cert}"
          tls_key_file    = "{env.peer_key}"
        }}
        api_addr     = "https://127.0.0.1:{port}"
        cluster_addr = "https://127.0.0.1:{cluster_port}"
        ui           = false
        """))
    url = f"https://127.0.0.1:{port}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    process = subprocess.Popen([str(bao_binary()), "server", f"-config={workdir / 'config.hcl'}"],
                               stdout=open(workdir / "bao.log", "wb"), stderr=subprocess.STDOUT,
                               env={**clean, "SSL_CERT_FILE": str(env.trust)}, cwd=workdir)
    server = OpenBao(process=process, workdir=workdir, url=url, ca=env.peer_ca,
                     root=hvac.Client(url=url, verify=str(env.peer_ca)), started_in=0.0)
    try:
        wait_for("OpenBao to listen", lambda: server.alive() and requests.get(
            f"{url}/v1/sys/health", verify=str(env.peer_ca), timeout=5).status_code == 501, timeout=30)
        init = server.root.sys.initialize(secret_shares=1, secret_threshold=1)
        server.root.sys.submit_unseal_key(init["keys"][0])
        server.root.token = init["root_token"]
        wait_for("OpenBao to be active", lambda: requests.get(
            f"{url}/v1/sys/health", verify=str(env.peer_ca), timeout=5).status_code == 200, timeout=30)
        yield server
    finally:
        server.stop()


def run_vault_cli(env: Env, bao: OpenBao, block: str) -> None:
    """A ```sh block of `vault` commands, run by bash with OpenBao's CLI as `vault` (as the root
    token). Blocks without here-documents run line by line, and `vault kv` lines are retried while
    a new KV v2 engine upgrades itself."""
    bin_dir = env.workdir / "vault-cli"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "vault").symlink_to(bao_binary())
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    cli_env = {**clean, "PATH": f"{bin_dir}{os.pathsep}{clean['PATH']}", "HOME": str(env.workdir),
               **{f"{prefix}_{name}": value for prefix in ("VAULT", "BAO")
                  for name, value in (("ADDR", bao.url), ("TOKEN", bao.root.token), ("CACERT", str(bao.ca)))}}

    def run(script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                              env=cli_env, timeout=60)

    steps = [block] if "<<" in block else [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    for step in steps:
        if step.lstrip().startswith("vault kv"):
            wait_for(f"`{step.strip()}`", lambda: run(step).returncode == 0, timeout=30)
            continue
        result = run(step)
        assert result.returncode == 0, f"the guide's commands failed:\n{step}\n{result.stderr}"


@pytest.fixture(scope="module")
def vault(env: Env, openbao: OpenBao) -> dict:
    text = substitute(guide("vault"), [*env.base_substitutions(), (VAULT_ADDRESS, openbao.url)])
    docs = documents(text)
    use_issuer(env, docs)
    vault_blocks = [b for b in blocks(text, "sh") if b.lstrip().startswith("vault ")]
    assert len(vault_blocks) == 3, "the trust commands, the KV secret, the per-pod role"
    for block in vault_blocks:
        run_vault_cli(env, openbao, block)
    return {"text": text, "docs": docs, "bao": openbao}


def hvac_snippet(env: Env, vault: dict, files: dict[str, str], name: str) -> str:
    [snippet] = blocks(vault["text"], "python")
    mount = mount_secret(env, files, name)
    return run_snippet(snippet.replace(MOUNT, str(mount)), {"REQUESTS_CA_BUNDLE": str(vault["bao"].ca)})


def test_vault_guide_role_logs_the_identity_in_and_hvac_reads_the_secret(env: Env, vault: dict) -> None:
    text, docs, bao = vault["text"], vault["docs"], vault["bao"]
    role = bao.root.auth.jwt.read_role("ci-web-deploy")["data"]
    assert role["role_type"] == "jwt" and role["bound_subject"] == "system:fedid:ci-web:deploy"
    apply_docs(env, [one(docs, "Namespace", "ci-web"), one(docs, "FederatedIdentity", "deploy")])
    check_commands(env, text, "ci-web", "deploy")
    files = secret_data(env.cluster, "ci-web", "deploy-token")["decoded"]
    assert set(files) == {"token", "vault-token", "expires-at"}
    claims = token_claims(env, files["token"], "vault")
    assert (claims["sub"], claims["namespace"], claims["identity"]) == ("system:fedid:ci-web:deploy", "ci-web", "deploy")
    # The 20m token_ttl, not the JWT's 30m, is when the credentials expire.
    status = get_json(env.cluster, "fid", "deploy", "-n", "ci-web")["status"]
    assert status["credentialsExpireAt"] < status["expiresAt"]
    pod = one(docs, "Pod", "deploy-job")
    check_pod_mounts_secret(pod, "deploy-token")
    assert env_of(pod["spec"]["containers"][0])["VAULT_ADDR"] == bao.url
    assert hvac_snippet(env, vault, files, "vault").strip() == "correct-horse"


def test_vault_guide_role_refuses_the_same_identity_name_in_another_namespace(env: Env, vault: dict) -> None:
    identity = json.loads(json.dumps(one(vault["docs"], "FederatedIdentity", "deploy")))
    identity["metadata"]["namespace"] = OTHER_NS
    apply_docs(env, [identity])
    refused = wait_for_reason(env.cluster, OTHER_NS, "deploy", "ExchangeRejected", timeout=60)
    assert condition(refused)["status"] == "Unknown", "a new identity refused: Ready is Unknown"
    # bound_subject is checked first (the namespace is part of sub): the error the guide quotes.
    upstream = refused["status"]["lastExchange"]["upstreamCode"]
    assert upstream == "error validating token: invalid subject (sub) claim", upstream
    assert f"`{upstream}`" in vault["text"]
    assert "vault-token" not in secret_keys(env.cluster, OTHER_NS, "deploy-token")
    delete_identity(env, OTHER_NS, "deploy")


def test_vault_guide_per_pod_role_is_bound_to_the_pipeline(env: Env, vault: dict) -> None:
    docs = vault["docs"]
    apply_docs(env, [one(docs, "Namespace", "ci-web"), one(docs, "ServiceAccount", "tekton-ci"),
                     one(docs, "FederatedIdentity", "release")])
    wait_for_reason(env.cluster, "ci-web", "release", "PodTemplate", timeout=60)
    pod = json.loads(env.cluster.kubectl("create", "-f", "-", "-o", "json",
                                         input=json.dumps(one(docs, "Pod", "release-x7k2p-publish-pod"))).stdout)
    secret_name = secret_name_of(pod)
    check_pod_mounts_secret(pod, secret_name)
    secret = wait_for(f"the pod's Secret {secret_name} with a vault-token", lambda: (
        s if "vault-token" in (s := secret_data(env.cluster, "ci-web", secret_name))["decoded"] else None), timeout=90)
    claims = token_claims(env, secret["decoded"]["token"], "vault")
    role = vault["bao"].root.auth.jwt.read_role("ci-web-release")["data"]
    assert {k: claims.get(k) for k in role["bound_claims"]} == role["bound_claims"]
    assert hvac_snippet(env, vault, secret["decoded"], "vault-pod").strip() == "correct-horse"


# --- gcp -----------------------------------------------------------------------------------------

GCP_STS, GCP_IAM = "https://sts.googleapis.com", "https://iamcredentials.googleapis.com"


def cel(expression: str, claims: dict) -> object:
    """A CEL expression of a workload identity provider over `assertion` (the token's claims)."""
    import celpy

    environment = celpy.Environment()
    return environment.program(environment.compile(expression)).evaluate({"assertion": celpy.json_to_cel(claims)})


@dataclass
class GoogleProvider:
    """The guide's pool provider and IAM binding, as the STS and IAM Credentials stand-in applies
    them: the audience, the attribute condition and mapping (evaluated with cel-python), then the
    `workloadIdentityUser` member the federated token's principal must be."""

    name: str  # //iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<id>
    mapping: dict[str, str]
    condition: str
    member: str
    env: Env
    principals: dict[str, dict] = field(default_factory=dict)  # federated token -> mapped attributes
    served: int = 0

    @classmethod
    def from_guide(cls, env: Env, text: str) -> "GoogleProvider":
        [create] = commands(text, "gcloud iam workload-identity-pools providers create-oidc")
        [binding] = commands(text, "gcloud iam service-accounts add-iam-policy-binding")
        assert option(create, "--issuer-uri") == env.issuer_url
        assert not any(word.startswith("--allowed-audiences") for word in create), "audiences: the provider's name"
        member = option(binding, "--member")
        assert option(binding, "--role") == "roles/iam.workloadIdentityUser"
        pool = option(create, "--workload-identity-pool")
        number = re.match(r"principal://iam\.googleapis\.com/projects/(\d+)/", member).group(1)
        provider = create[create.index("create-oidc") + 1]
        name = f"//iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/{pool}/providers/{provider}"
        mapping = dict(pair.split("=", 1) for pair in option(create, "--attribute-mapping").split(","))
        return cls(name=name, mapping=mapping, condition=option(create, "--attribute-condition"), member=member, env=env)

    def attributes(self, claims: dict) -> dict[str, str]:
        return {target: str(cel(expression, claims)) for target, expression in self.mapping.items()}

    def allows(self, claims: dict) -> bool:
        return bool(cel(self.condition, claims))

    def principal(self, attributes: dict[str, str]) -> str:
        pool = self.name.rsplit("/providers/", 1)[0].removeprefix("//")
        return f"principal://{pool}/subject/{attributes['google.subject']}"

    def __call__(self, seen: Recorded) -> Reply:
        if seen.path == "/sts/v1/token":
            form = seen.form
            if form.get("audience") != self.name:
                return Reply(400, {"error": "invalid_request", "error_description": "Invalid value for audience"})
            try:
                claims = token_claims(self.env, form["subject_token"], self.name)
            except Exception as error:  # noqa: BLE001 (any invalid token is the STS's refusal)
                return Reply(400, {"error": "invalid_grant", "error_description": str(error)})
            if not self.allows(claims):
                return Reply(400, {"error": "unauthorized_client",
                                   "error_description": "The given credential is rejected by the attribute condition."})
            self.served += 1
            federated = f"federated-{self.served}"
            self.principals[federated] = self.attributes(claims)
            return Reply(200, {"access_token": federated, "expires_in": 3600, "token_type": "Bearer",
                               "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})
        if seen.path.startswith("/iam/v1/projects/-/serviceAccounts/") and seen.path.endswith(":generateAccessToken"):
            attributes = self.principals.get(seen.headers.get("authorization", "").removeprefix("Bearer "))
            if attributes is None or self.principal(attributes) != self.member:
                return Reply(403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                                             "message": "Permission 'iam.serviceAccounts.getAccessToken' denied"}})
            expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
            return Reply(200, {"accessToken": f"account-token-{self.served}", "expireTime": expire})
        return Reply(404, {"error": "unscripted"})


@pytest.fixture(scope="module")
def gcp(env: Env) -> Iterator[dict]:
    # A placeholder handler until the provider (which needs the recorder's URL in the text) exists.
    handler: list = [lambda _: Reply(404, {})]
    with Recorder(env.peer_cert, env.peer_key, handler=lambda seen: handler[0](seen)) as recorder:
        text = substitute(guide("gcp"), [*env.base_substitutions(), (GCP_STS, f"{recorder.url}/sts"),
                                         (GCP_IAM, f"{recorder.url}/iam")])
        provider = GoogleProvider.from_guide(env, text)
        handler[0] = provider
        docs = documents(text)
        use_issuer(env, docs)
        apply_docs(env, [one(docs, "Namespace", "ci-data")])
        yield {"text": text, "docs": docs, "provider": provider, "recorder": recorder}


def gcp_identity(gcp: dict, namespace: str = "ci-data", name: str = "deploy") -> dict:
    """The guide's identity, pointed at the stand-ins on the paths of Google's default endpoints."""
    identity = json.loads(json.dumps(one(gcp["docs"], "FederatedIdentity", "deploy")))
    identity["metadata"].update(namespace=namespace, name=name)
    spec = identity["spec"]["exchange"]["gcp"]
    url = gcp["recorder"].url
    spec["tokenURL"] = f"{url}/sts/v1/token"
    spec["impersonationURL"] = f"{url}/iam/v1/projects/-/serviceAccounts/{spec['serviceAccountEmail']}:generateAccessToken"
    return identity


def test_gcp_guide_defaults_are_allowed_and_the_audience_is_the_provider(env: Env, gcp: dict) -> None:
    helm_template(env, gcp["text"])
    original = documents(guide("gcp"))
    allowed = one(original, "IdentityIssuer")["spec"]["exchange"]["allowedEndpoints"]
    spec = one(original, "FederatedIdentity", "deploy")["spec"]
    email = spec["exchange"]["gcp"]["serviceAccountEmail"]
    # fedid's defaults (no tokenURL, impersonationURL) must be covered by the guide's issuer.
    for url in ("https://sts.googleapis.com/v1/token",
                f"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{email}:generateAccessToken"):
        assert any(url == prefix or url.startswith(prefix.rstrip("/") + "/") for prefix in allowed), url
    provider = gcp["provider"]
    identity = one(gcp["docs"], "FederatedIdentity", "deploy")["spec"]
    assert identity["audiences"] == [provider.name] and identity["exchange"]["gcp"]["audience"] == provider.name
    assert email in one(documents(guide("gcp")), "FederatedIdentity")["spec"]["exchange"]["gcp"]["serviceAccountEmail"]
    [binding] = commands(guide("gcp"), "gcloud iam service-accounts add-iam-policy-binding")
    assert binding[4] == email, binding


def test_gcp_guide_mapping_and_condition_admit_only_the_identity(env: Env, gcp: dict) -> None:
    provider: GoogleProvider = gcp["provider"]
    mine = identity_token(env, "ci-data", "deploy-claims", [provider.name])
    elsewhere = identity_token(env, OTHER_NS, "deploy-claims", [provider.name])
    attributes = provider.attributes(mine)
    assert attributes == {"google.subject": mine["sub"], "attribute.namespace": "ci-data",
                          "attribute.identity": "deploy-claims"}
    assert len(attributes["google.subject"].encode()) <= 127, "google.subject is at most 127 bytes"
    assert provider.allows(mine) and not provider.allows(elsewhere)
    # Nor any other namespace (claims as fedid would mint them there).
    for namespace in ("ci-data-2", "ci", "default", "kube-system"):
        assert not provider.allows({**mine, "namespace": namespace, "sub": f"system:fedid:{namespace}:deploy"})
    for namespace in ("ci-data", OTHER_NS):
        delete_identity(env, namespace, "deploy-claims")
    # The binding names the guide's identity only; the namespace-wide principalSet the others too.
    assert provider.member == provider.principal({"google.subject": "system:fedid:ci-data:deploy"})
    assert provider.principal(attributes) != provider.member
    [principal_set] = re.findall(r'--member="(principalSet://[^"]+)"', gcp["text"])
    pool = provider.name.rsplit("/providers/", 1)[0].removeprefix("//")
    assert principal_set == f"principalSet://{pool}/attribute.namespace/{attributes['attribute.namespace']}"


def test_gcp_guide_identity_is_ready_and_google_auth_uses_its_external_account_json(env: Env, gcp: dict) -> None:
    text, docs, provider = gcp["text"], gcp["docs"], gcp["provider"]
    apply_docs(env, [one(docs, "Namespace", "ci-data"), gcp_identity(gcp)])
    check_commands(env, text, "ci-data", "deploy")
    files = secret_data(env.cluster, "ci-data", "deploy-token")["decoded"]
    assert {"token", "access-token", "token-type", "external_account.json", "expires-at"} <= set(files)
    assert files["access-token"].startswith("account-token-")
    account = json.loads(files["external_account.json"])
    assert account["type"] == "external_account" and account["audience"] == provider.name
    assert account["credential_source"]["file"] == f"{MOUNT}/token"
    assert account["token_url"] == f"{gcp['recorder'].url}/sts/v1/token"
    assert account["service_account_impersonation_url"].endswith(
        "/serviceAccounts/deployer@my-project.iam.gserviceaccount.com:generateAccessToken")
    pod = one(docs, "Pod", "deploy-job")
    check_pod_mounts_secret(pod, "deploy-token")
    mount = mount_secret(env, files, "gcp")
    child = {**pod_container_env(pod, mount), "REQUESTS_CA_BUNDLE": str(env.peer_ca)}
    assert child["GOOGLE_APPLICATION_CREDENTIALS"] == str(mount / "external_account.json")
    assert Path(child["CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"]).read_text() == files["access-token"]
    before = len(gcp["recorder"].requests)
    [snippet] = blocks(text, "python")
    output = run_snippet(snippet, child)
    assert "service account deployer@my-project.iam.gserviceaccount.com" in output, output
    # The SDK itself went through the STS with the mounted token, then impersonated.
    sdk = gcp["recorder"].requests[before:]
    assert [seen.path.split("/")[1] for seen in sdk] == ["sts", "iam"], [seen.path for seen in sdk]
    assert sdk[0].form["subject_token"] == files["token"]


def test_gcp_guide_provider_refuses_another_namespace_and_iam_another_identity(env: Env, gcp: dict) -> None:
    apply_docs(env, [one(gcp["docs"], "Namespace", "ci-data"), gcp_identity(gcp, OTHER_NS),
                     gcp_identity(gcp, "ci-data", "deploy-nightly")])
    elsewhere = wait_for_reason(env.cluster, OTHER_NS, "deploy", "ExchangeRejected", timeout=60)
    assert elsewhere["status"]["lastExchange"]["upstreamCode"] == "unauthorized_client"
    sibling = wait_for_reason(env.cluster, "ci-data", "deploy-nightly", "ExchangeRejected", timeout=60)
    assert "access-token" not in secret_keys(env.cluster, "ci-data", "deploy-nightly-token")
    assert sibling["status"]["lastExchange"]["upstreamCode"] == "PERMISSION_DENIED"
    for namespace, name in ((OTHER_NS, "deploy"), ("ci-data", "deploy-nightly")):
        delete_identity(env, namespace, name)


# --- azure ---------------------------------------------------------------------------------------

ENTRA = "https://login.microsoftonline.com"


@dataclass
class Entra:
    """The Entra ID stand-in: a client credentials request is answered only when its client
    assertion verifies against fedid's JWKS and matches one of the application's federated
    identity credentials exactly (issuer, subject, the one audience), as Entra matches them."""

    env: Env
    tenant: str
    client_id: str
    credentials: list[dict]
    served: int = 0

    def __call__(self, seen: Recorded) -> Reply:
        if seen.path != f"/{self.tenant}/oauth2/v2.0/token":
            return Reply(404, {"error": "unscripted"})
        form = seen.form
        if form.get("client_id") != self.client_id or form.get("grant_type") != "client_credentials":
            return Reply(400, {"error": "unauthorized_client", "error_description": "AADSTS700016: application not found"})
        assertion = form.get("client_assertion", "")
        unverified = jwt.decode(assertion, options={"verify_signature": False})
        for credential in self.credentials:
            [audience] = credential["audiences"]
            if (unverified.get("iss"), unverified.get("sub")) != (credential["issuer"], credential["subject"]):
                continue
            try:
                token_claims(self.env, assertion, audience)
            except jwt.InvalidTokenError:
                return Reply(400, {"error": "invalid_client", "error_description": "AADSTS7002121: audience"})
            self.served += 1
            return Reply(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                               "access_token": f"entra-{self.served}"})
        return Reply(400, {"error": "invalid_client", "error_description":
                           "AADSTS700213: No matching federated identity record found for presented assertion subject"})


@pytest.fixture(scope="module")
def azure(env: Env) -> Iterator[dict]:
    handler: list = [lambda _: Reply(404, {})]
    with Recorder(env.peer_cert, env.peer_key, handler=lambda seen: handler[0](seen)) as recorder:
        text = substitute(guide("azure"), [*env.base_substitutions(), (ENTRA, recorder.url)])
        [credential] = [json.loads(b) for b in blocks(text, "json") if '"subject"' in b]
        [app] = commands(text, "az ad app federated-credential create")
        [managed] = commands(text, "az identity federated-credential create")
        # The managed identity's credential has the same three values as the application's.
        assert (option(managed, "--issuer"), option(managed, "--subject"), option(managed, "--audiences")) == (
            credential["issuer"], credential["subject"], credential["audiences"][0])
        assert option(app, "--parameters") == "credential.json"
        docs = documents(text)
        azure_spec = one(docs, "FederatedIdentity", "deploy")["spec"]["exchange"]["azure"]
        assert option(app, "--id") == azure_spec["clientID"]
        # Step 7's sentence: the per-pod identity's one credential has the pod tokens' subject.
        per_pod = {**credential, "subject": "system:fedid:ci-app:release"}
        assert f"`{per_pod['subject']}`" in text
        entra = Entra(env=env, tenant=azure_spec["tenantID"], client_id=azure_spec["clientID"],
                      credentials=[credential, per_pod])
        handler[0] = entra
        use_issuer(env, docs)
        apply_docs(env, [one(docs, "Namespace", "ci-app")])
        yield {"text": text, "docs": docs, "recorder": recorder, "credential": credential, "entra": entra}


def azure_identity(azure: dict, name: str, namespace: str = "ci-app") -> dict:
    """The guide's identity with the stand-in as its authority (Entra's default host otherwise)."""
    identity = json.loads(json.dumps(one(azure["docs"], "FederatedIdentity", name)))
    identity["metadata"]["namespace"] = namespace
    identity["spec"]["exchange"]["azure"]["authorityHost"] = azure["recorder"].url
    return identity


def test_azure_guide_credential_matches_the_identitys_token_and_no_other(env: Env, azure: dict) -> None:
    helm_template(env, azure["text"])
    credential = azure["credential"]
    assert credential["issuer"] == env.issuer_url
    mine = identity_token(env, "ci-app", "deploy-claims", credential["audiences"])
    sibling_sub = "system:fedid:ci-app:deploy-claims"
    elsewhere = identity_token(env, OTHER_NS, "deploy-claims", credential["audiences"])
    assert mine["sub"] == sibling_sub != credential["subject"]
    assert elsewhere["sub"] != credential["subject"] and elsewhere["namespace"] == OTHER_NS
    for namespace in ("ci-app", OTHER_NS):
        delete_identity(env, namespace, "deploy-claims")
    allowed = one(documents(guide("azure")), "IdentityIssuer")["spec"]["exchange"]["allowedEndpoints"]
    tenant = azure["entra"].tenant
    assert any(f"{ENTRA}/{tenant}/oauth2/v2.0/token".startswith(prefix) for prefix in allowed)


def test_azure_guide_identity_is_ready_and_azure_identity_uses_the_mounted_token(env: Env, azure: dict) -> None:
    text, docs, credential = azure["text"], azure["docs"], azure["credential"]
    apply_docs(env, [azure_identity(azure, "deploy")])
    check_commands(env, text, "ci-app", "deploy")
    files = secret_data(env.cluster, "ci-app", "deploy-token")["decoded"]
    assert {"token", "access-token", "token-type", "expires-at"} <= set(files)
    claims = token_claims(env, files["token"], credential["audiences"][0])
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    assert (claims["iss"], claims["sub"], audiences) == (credential["issuer"], credential["subject"],
                                                         credential["audiences"])
    pod = one(docs, "Pod", "deploy-job")
    check_pod_mounts_secret(pod, "deploy-token")
    mount = mount_secret(env, files, "azure")
    # The stand-in is the authority (AZURE_AUTHORITY_HOST, as off the public cloud) and its CA.
    child = {**pod_container_env(pod, mount), "AZURE_AUTHORITY_HOST": azure["recorder"].url,
             "REQUESTS_CA_BUNDLE": str(env.peer_ca)}
    before = azure["entra"].served
    [snippet] = blocks(text, "python")
    assert "token expires" in run_snippet(snippet, child)
    assert azure["entra"].served == before + 1, "the SDK sent the mounted token to the authority"

    # The same identity name in another namespace has another subject: Entra refuses it.
    apply_docs(env, [azure_identity(azure, "deploy", OTHER_NS)])
    refused = wait_for_reason(env.cluster, OTHER_NS, "deploy", "ExchangeRejected", timeout=60)
    assert refused["status"]["lastExchange"]["upstreamCode"] == "invalid_client"
    assert "access-token" not in secret_keys(env.cluster, OTHER_NS, "deploy-token")
    delete_identity(env, OTHER_NS, "deploy")


def test_azure_guide_per_pod_variant_sets_the_sdk_environment(env: Env, azure: dict) -> None:
    text, docs = azure["text"], azure["docs"]
    apply_docs(env, [one(docs, "ServiceAccount", "gitlab-runner"), azure_identity(azure, "release")])
    wait_for_reason(env.cluster, "ci-app", "release", "PodTemplate", timeout=60)
    pod = json.loads(env.cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(
        one(docs, "Pod", "runner-abc123-project-42-concurrent-0"))).stdout)
    secret_name = secret_name_of(pod)
    check_pod_mounts_secret(pod, secret_name)
    container_env = env_of(pod["spec"]["containers"][0])
    spec = one(docs, "FederatedIdentity", "release")["spec"]["exchange"]["azure"]
    assert (container_env["AZURE_CLIENT_ID"], container_env["AZURE_TENANT_ID"]) == (spec["clientID"], spec["tenantID"])
    assert container_env["AZURE_FEDERATED_TOKEN_FILE"] == f"{MOUNT}/token"
    assert container_env["AZURE_AUTHORITY_HOST"] == azure["recorder"].url
    secret = wait_for(f"the pod's Secret {secret_name} with an access token", lambda: (
        s if "access-token" in (s := secret_data(env.cluster, "ci-app", secret_name))["decoded"] else None), timeout=90)
    claims = token_claims(env, secret["decoded"]["token"], "api://AzureADTokenExchange")
    assert claims["sub"] == "system:fedid:ci-app:release"
    assert (claims["run_id"], claims["job"], claims["ref"], claims["repository"]) == ("9001", "release", "main", "42")
    mount = mount_secret(env, secret["decoded"], "azure-pod")
    child = {k: v.replace(MOUNT, str(mount)) for k, v in container_env.items() if k.startswith("AZURE_")}
    [snippet] = blocks(text, "python")
    assert "token expires" in run_snippet(snippet, {**child, "REQUESTS_CA_BUNDLE": str(env.peer_ca)})


# --- oauth2 (Dex) --------------------------------------------------------------------------------

DEX_ISSUER = "https://dex.example.com/dex"


@pytest.fixture(scope="module")
def dex(env: Env) -> Iterator[dict]:
    """Dex with the guide's connector and client (its storage and listener are the test's), started
    after the guide's issuer is Ready: the connector reads fedid's discovery document at start."""
    port = free_port()
    base = f"https://127.0.0.1:{port}/dex"
    text = substitute(guide("oauth2"), [*env.base_substitutions(), (DEX_ISSUER, base)])
    docs = [d for block in blocks(text, "yaml") for d in yaml.safe_load_all(block) if d]
    [fragment] = [d for d in docs if "connectors" in d]
    kube_docs = [d for d in docs if "kind" in d]
    use_issuer(env, kube_docs)
    config = {"issuer": base, "storage": {"type": "memory"}, "logger": {"level": "info"},
              "web": {"https": f"127.0.0.1:{port}", "tlsCert": str(env.peer_cert), "tlsKey": str(env.peer_key)},
              **fragment}
    workdir = env.workdir / "dex"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(json.dumps(config))
    peer = Peer("dex", [str(peers_bin() / "dex"), "serve", str(workdir / "config.yaml")], workdir,
                {"SSL_CERT_FILE": str(env.trust)})
    try:
        wait_for("Dex discovery", lambda: peer.alive() and requests.get(
            f"{base}/.well-known/openid-configuration", verify=str(env.peer_ca), timeout=5).status_code == 200,
            timeout=60)
        apply_docs(env, [one(kube_docs, "Namespace", "ci-web")])
        yield {"text": text, "docs": kube_docs, "fragment": fragment, "base": base, "peer": peer}
    finally:
        peer.stop()


def dex_identity(dex: dict, name: str = "deploy", namespace: str = "ci-web", **spec: object) -> dict:
    identity = json.loads(json.dumps(one(dex["docs"], "FederatedIdentity", "deploy")))
    identity["metadata"].update(name=name, namespace=namespace)
    identity["spec"].update(spec)
    return identity


def test_oauth2_guide_dex_exchanges_the_identitys_token_and_the_api_snippet_verifies_it(env: Env, dex: dict) -> None:
    text, docs = dex["text"], dex["docs"]
    helm_template(env, text)
    apply_docs(env, [one(docs, "Secret", "dex-client"), one(docs, "FederatedIdentity", "deploy")])
    check_commands(env, text, "ci-web", "deploy")
    files = secret_data(env.cluster, "ci-web", "deploy-token")["decoded"]
    assert {"token", "access-token", "token-type", "issued-token-type", "expires-at"} <= set(files)
    assert files["token-type"] == "bearer", "Dex's token_type, as the guide says"
    pod = one(docs, "Pod", "deploy-job")
    check_pod_mounts_secret(pod, "deploy-token")
    assert f"{MOUNT}/access-token" in " ".join(pod["spec"]["containers"][0]["command"])
    mount = mount_secret(env, files, "dex")
    [snippet] = blocks(text, "python")
    output = run_snippet(snippet.replace(MOUNT, str(mount)), {"SSL_CERT_FILE": str(env.trust)})
    assert output.strip() == "system:fedid:ci-web:deploy"
    # The client in the guide's Dex configuration is the one fedid authenticates as.
    [client] = dex["fragment"]["staticClients"]
    secret = one(docs, "Secret", "dex-client")
    assert secret["stringData"]["client-secret"] == client["secret"]
    assert one(docs, "FederatedIdentity", "deploy")["spec"]["exchange"]["oauth2"]["clientAuth"]["clientID"] == client["id"]


def test_oauth2_guide_allowed_groups_keep_other_namespaces_out_and_nothing_else(env: Env, dex: dict) -> None:
    docs = dex["docs"]
    secret = json.loads(json.dumps(one(docs, "Secret", "dex-client")))
    secret["metadata"]["namespace"] = OTHER_NS
    apply_docs(env, [one(docs, "Secret", "dex-client"), secret,
                     dex_identity(dex, "deploy", OTHER_NS),
                     # What the guide says Dex does not check: another identity, another audience.
                     dex_identity(dex, "deploy-other-audience", audiences=["https://elsewhere.example.com"])])
    refused = wait_for_reason(env.cluster, OTHER_NS, "deploy", "ExchangeRejected", timeout=60)
    assert refused["status"]["lastExchange"]["upstreamCode"] == "access_denied"
    env.cluster.kubectl("wait", "--for=condition=Ready", "fid/deploy-other-audience", "-n", "ci-web", "--timeout=60s")
    assert condition(get_json(env.cluster, "fid", "deploy-other-audience", "-n", "ci-web"),
                     "CredentialsFresh")["status"] == "True"
    # A wrong client secret: invalid_client.
    wrong = json.loads(json.dumps(one(docs, "Secret", "dex-client")))
    wrong["metadata"]["name"] = "dex-client-wrong"
    wrong["stringData"]["client-secret"] = "not-the-secret"
    identity = dex_identity(dex, "deploy-wrong-secret")
    identity["spec"]["exchange"]["oauth2"]["clientAuth"]["clientSecret"]["secretRef"]["name"] = "dex-client-wrong"
    apply_docs(env, [wrong, identity])
    refused = wait_for_reason(env.cluster, "ci-web", "deploy-wrong-secret", "ExchangeRejected", timeout=60)
    assert refused["status"]["lastExchange"]["upstreamCode"] == "invalid_client"
    for namespace, name in ((OTHER_NS, "deploy"), ("ci-web", "deploy-other-audience"), ("ci-web", "deploy-wrong-secret")):
        delete_identity(env, namespace, name)
