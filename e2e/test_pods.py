"""Per-pod tokens: FederatedIdentities with `spec.pods`, fedid's admission webhook and token endpoint.

`fedid run --pod-server-addr` serves the mutating webhook (`POST /mutate`) and the token endpoint
(`POST /v1/token`) over HTTPS with a CA it generates into a Secret and patches into the
MutatingWebhookConfiguration this module creates, exactly as a user would set it up. The real
kube-apiserver calls the webhook when a labelled pod is created; there is no kubelet, so pods
stay Pending (which counts as live) unless a test sets their phase through the status
subresource. Tokens are verified with PyJWT against the JWKS fetched over HTTPS.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import E2E_DIR, REPO_ROOT, Cluster, wait_for
from fedid_harness import (
    Operator,
    condition,
    events_for,
    fedid_binary,
    free_port,
    get_json,
    jwts_in,
    secret_data,
    verify_token,
    wait_for_reason,
)

# Names unique to this run, so a reused cluster (FEDID_E2E_CLUSTER) starts clean.
RUN = uuid.uuid4().hex[:6]
OPERATOR_NS = f"fedid-pods-{RUN}"
ISSUER = f"pods-{RUN}"
WEBHOOK = f"fedid-pods-{RUN}"
# Every namespace of this run carries this label: with RUN as value the issuer allows it, with
# NOT_ALLOWED it does not. The webhook is scoped to these namespaces, so that it never sees the
# pods of other tests or runs sharing the cluster (nor theirs this run's).
RUN_LABEL = "fedid-e2e/pods-run"
NOT_ALLOWED = f"{RUN}-not-allowed"
RUN_NAMESPACES = {"matchExpressions": [{"key": RUN_LABEL, "operator": "In", "values": [RUN, NOT_ALLOWED]}]}
TOKEN_REQUEST_AUDIENCE = "fedid.dev/token-request"
POD_TLS_SECRET = "fedid-pod-server-tls"
MOUNT = "/var/run/secrets/fedid"
REQUEST_MOUNT = "/var/run/secrets/fedid-request"
AWS_ROLE = "arn:aws:iam::123456789012:role/ci"
FIXTURES = E2E_DIR / "fixtures" / "ci-pods"
# Claims every token has; the rest comes from the pod, the preset and the identity.
STANDARD_CLAIMS = {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "namespace", "identity"}


@dataclass
class PodServer:
    """The operator under test and its pod server (webhook and token endpoint)."""

    operator: Operator
    port: int
    base_args: list[str]
    ca: Path = field(init=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/v1/token"

    def session(self) -> requests.Session:
        # REQUESTS_CA_BUNDLE (and any proxy) of the environment must not apply: only fedid's CA.
        session = requests.Session()
        session.trust_env = False
        return session

    def healthy(self) -> bool:
        return self.session().get(f"{self.url}/healthz", verify=str(self.ca), timeout=5).status_code == 200

    def request_token(self, bearer: str | None, body: object) -> requests.Response:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
        return self.session().post(self.token_url, json=body, headers=headers, verify=str(self.ca), timeout=15)

    def restart(self, *extra: str) -> None:
        """Stops the operator and starts it again with the base arguments and `extra`."""
        self.operator.stop()
        self.operator.extra_args = [*self.base_args, *extra]
        self.operator.start()
        wait_for("the pod server to answer", self.healthy, timeout=30)


def webhook_manifest(port: int) -> str:
    return json.dumps(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK},
            "webhooks": [
                {
                    "name": "pods.fedid.dev",
                    "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate"},
                    "objectSelector": {"matchExpressions": [{"key": "fedid.dev/identity", "operator": "Exists"}]},
                    "namespaceSelector": RUN_NAMESPACES,
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                            "scope": "Namespaced",
                        }
                    ],
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "reinvocationPolicy": "IfNeeded",
                    "timeoutSeconds": 5,
                }
            ],
        }
    )


def issuer_manifest(operator: Operator) -> str:
    return json.dumps(
        {
            "apiVersion": "fedid.dev/v1alpha1",
            "kind": "IdentityIssuer",
            "metadata": {"name": ISSUER},
            "spec": {
                "issuerURL": operator.issuer_url(ISSUER),
                "signing": {"prepublishPeriod": "2s", "retirementMargin": "1m"},
                "allowedNamespaces": {"selector": {"matchLabels": {RUN_LABEL: RUN}}},
                "tokenLifetime": {"default": "1h", "maximum": "2h"},
            },
        }
    )


@pytest.fixture(scope="module")
def pods(cluster: Cluster) -> Iterator[PodServer]:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    for crd in ("identityissuers.fedid.dev", "federatedidentities.fedid.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    cluster.kubectl("create", "namespace", OPERATOR_NS)
    port = free_port()
    # The configuration exists before fedid starts, without a caBundle: fedid sets it.
    cluster.apply(webhook_manifest(port))
    workdir = Path(tempfile.mkdtemp(prefix="fedid-e2e-pods-"))
    base_args = [
        "--pod-server-addr", f"127.0.0.1:{port}",
        "--pod-tls-hosts", "127.0.0.1",
        "--webhook-configuration", WEBHOOK,
        "--pod-token-url", f"https://127.0.0.1:{port}/v1/token",
    ]
    operator = Operator(
        cluster=cluster, binary=fedid_binary(), workdir=workdir, namespace=OPERATOR_NS, name="pods",
        extra_args=list(base_args),
    )
    server = PodServer(operator=operator, port=port, base_args=base_args)
    try:
        operator.start()
        tls = wait_for("the pod server's generated certificate", lambda: secret_data(cluster, OPERATOR_NS, POD_TLS_SECRET))
        assert {"ca.crt", "tls.crt", "tls.key"} <= set(tls["decoded"])
        server.ca = workdir / "pod-server-ca.crt"
        server.ca.write_text(tls["decoded"]["ca.crt"])

        def ca_bundle_set() -> bool:
            configuration = get_json(cluster, "mutatingwebhookconfiguration", WEBHOOK)
            bundles = [webhook["clientConfig"].get("caBundle") for webhook in configuration["webhooks"]]
            return all(bundle and base64.b64decode(bundle).decode() == tls["decoded"]["ca.crt"] for bundle in bundles)

        wait_for("fedid to set the webhook's caBundle", ca_bundle_set, timeout=30)
        wait_for("the pod server to answer", server.healthy, timeout=30)
        cluster.apply(issuer_manifest(operator))
        cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{ISSUER}", "--timeout=60s")
        yield server
    finally:
        operator.stop()
        # Left behind, the configuration would refuse this run's labelled pods for good.
        cluster.kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK, "--ignore-not-found", check=False)
        namespaces = get_json(cluster, "namespaces", "-l", f"{RUN_LABEL} in ({RUN},{NOT_ALLOWED})")["items"]
        for name in [OPERATOR_NS, *(namespace["metadata"]["name"] for namespace in namespaces)]:
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
        cluster.kubectl("delete", "identityissuer", ISSUER, "--wait=false", "--ignore-not-found", check=False)
        logs = operator.logs()
        # Whatever happened, no token, key or Secret data may ever reach the logs.
        assert "PRIVATE KEY" not in logs
        assert not jwts_in(logs), f"a JWT appeared in the operator's logs: {jwts_in(logs)}"


# --- helpers -------------------------------------------------------------------------------


def new_namespace(cluster: Cluster, prefix: str, allowed: bool = True) -> str:
    """A namespace of this run, allowed by the issuer unless `allowed` is false, with its
    `default` ServiceAccount (the ServiceAccount admission plugin refuses pods without it)."""
    name = f"{prefix}-{RUN}"
    labels = {RUN_LABEL: RUN if allowed else NOT_ALLOWED}
    cluster.apply(json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}))
    wait_for(
        f"the default ServiceAccount of {name}",
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
    )
    return name


def create_identity(
    cluster: Cluster, namespace: str, name: str, pods: dict | None, reason: str = "PodTemplate", **spec: object
) -> dict:
    """Applies a FederatedIdentity of the module's issuer; with `pods`, waits until its Ready
    condition has `reason` (then also the webhook's cache holds it)."""
    body: dict = {"issuerRef": ISSUER, "audiences": ["sts.example.com"], **spec}
    if pods is not None:
        body["pods"] = pods
    cluster.apply(
        json.dumps(
            {
                "apiVersion": "fedid.dev/v1alpha1",
                "kind": "FederatedIdentity",
                "metadata": {"name": name, "namespace": namespace},
                "spec": body,
            }
        )
    )
    if pods is None:
        cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", namespace, "--timeout=60s")
        return get_json(cluster, "fid", name, "-n", namespace)
    return wait_for_reason(cluster, namespace, name, reason)


def pod_manifest(
    name: str | None = None,
    identity: str | None = None,
    service_account: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    containers: list[dict] | None = None,
    init_containers: list[dict] | None = None,
    volumes: list[dict] | None = None,
) -> str:
    metadata: dict = {"name": name} if name else {"generateName": "job-"}
    metadata["labels"] = {**({"fedid.dev/identity": identity} if identity else {}), **(labels or {})}
    if annotations:
        metadata["annotations"] = annotations
    spec: dict = {
        "restartPolicy": "Never",
        "containers": containers or [{"name": "main", "image": "busybox"}],
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    if init_containers:
        spec["initContainers"] = init_containers
    if volumes:
        spec["volumes"] = volumes
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})


def try_create_pod(cluster: Cluster, namespace: str, manifest: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("create", "-n", namespace, "-f", "-", "-o", "json", input=manifest, check=False)


def create_pod(cluster: Cluster, namespace: str, manifest: str) -> dict:
    """Creates a pod and returns it as stored, after admission."""
    result = try_create_pod(cluster, namespace, manifest)
    assert result.returncode == 0, f"the pod was refused: {result.stderr.strip()}"
    return json.loads(result.stdout)


def create_fixture_pod(cluster: Cluster, namespace: str, path: Path) -> dict:
    result = cluster.kubectl("create", "-n", namespace, "-f", str(path), "-o", "json", check=False)
    assert result.returncode == 0, f"{path.name} was refused: {result.stderr.strip()}"
    return json.loads(result.stdout)


def secret_name_of(pod: dict) -> str:
    return pod["metadata"]["annotations"]["fedid.dev/secret-name"]


def generated_for(identity: str, secret_name: str) -> bool:
    """Whether `secret_name` is one the webhook makes up: the identity and 8 random characters."""
    return re.fullmatch(rf"{re.escape(identity)}-[a-z0-9]{{8}}", secret_name) is not None


def wait_for_pod_secret(cluster: Cluster, pod: dict, timeout: float = 60) -> dict:
    namespace, name = pod["metadata"]["namespace"], secret_name_of(pod)
    return wait_for(
        f"Secret {name} of pod {pod['metadata']['name']}", lambda: secret_data(cluster, namespace, name), timeout=timeout
    )


def absent(cluster: Cluster, kind: str, name: str, namespace: str) -> bool:
    result = cluster.kubectl("get", kind, name, "-n", namespace, check=False)
    return result.returncode != 0 and "NotFound" in result.stderr


def set_phase(cluster: Cluster, namespace: str, name: str, phase: str) -> None:
    cluster.kubectl(
        "patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": phase}}),
    )


def event(cluster: Cluster, namespace: str, pod: str, reason: str, kind: str) -> dict | None:
    for entry in events_for(cluster, namespace, pod):
        if entry["reason"] == reason and entry["type"] == kind:
            return entry
    return None


def pod_token(cluster: Cluster, pod: dict, audience: str = TOKEN_REQUEST_AUDIENCE) -> str:
    """A service-account token bound to `pod`, as the kubelet projects it into the pod."""
    metadata = pod["metadata"]
    return cluster.kubectl(
        "create", "token", pod["spec"]["serviceAccountName"], "-n", metadata["namespace"],
        "--audience", audience, "--duration", "10m",
        "--bound-object-kind", "Pod", "--bound-object-name", metadata["name"], "--bound-object-uid", metadata["uid"],
    ).stdout.strip()


def env_of(container: dict) -> dict[str, str]:
    names = [variable["name"] for variable in container.get("env", [])]
    assert len(names) == len(set(names)), f"{container['name']} has a variable twice: {names}"
    return {variable["name"]: variable.get("value") for variable in container.get("env", [])}


def mounts_of(container: dict) -> dict[str, dict]:
    return {mount["name"]: mount for mount in container.get("volumeMounts", [])}


def volumes_of(pod: dict) -> dict[str, dict]:
    return {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}


def refusal(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body.get("error", ""), body.get("error_description", "")


# --- the webhook ---------------------------------------------------------------------------


def test_a_labelled_pod_is_mutated_as_documented_and_each_pod_gets_its_own_secret(
    cluster: Cluster, pods: PodServer
) -> None:
    namespace = new_namespace(cluster, "mutate")
    create_identity(cluster, namespace, "builder", {"allowedAudiences": ["vault.example.com"], "awsRoleARN": AWS_ROLE})
    manifest = pod_manifest(
        identity="builder",
        init_containers=[{"name": "clone", "image": "git"}],
        containers=[
            {"name": "build", "image": "builder", "env": [{"name": "FEDID_TOKEN_FILE", "value": "/mine"}]},
            {"name": "test", "image": "tester"},
            # Already uses the mount path for something else: no second mount there.
            {"name": "sidecar", "image": "proxy", "volumeMounts": [{"name": "cache", "mountPath": MOUNT}]},
        ],
        volumes=[{"name": "cache", "emptyDir": {}}],
    )
    pod = create_pod(cluster, namespace, manifest)

    secret_name = secret_name_of(pod)
    assert generated_for("builder", secret_name), secret_name
    volumes = volumes_of(pod)
    assert volumes["fedid-token"]["secret"]["secretName"] == secret_name
    assert volumes["fedid-token"]["secret"]["optional"] is False
    [projection] = volumes["fedid-token-request"]["projected"]["sources"]
    assert projection["serviceAccountToken"] == {
        "audience": TOKEN_REQUEST_AUDIENCE, "expirationSeconds": 3600, "path": "token",
    }
    assert volumes["cache"] == {"name": "cache", "emptyDir": {}}

    expected_env = {
        "FEDID_TOKEN_FILE": f"{MOUNT}/token",
        "AWS_ROLE_ARN": AWS_ROLE,
        "AWS_WEB_IDENTITY_TOKEN_FILE": f"{MOUNT}/token",
        "FEDID_TOKEN_URL": pods.token_url,
        "FEDID_TOKEN_CA_FILE": f"{MOUNT}/token-request-ca.crt",
    }
    containers = {c["name"]: c for c in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]}
    assert set(containers) == {"clone", "build", "test", "sidecar"}
    for name, container in containers.items():
        mounts = mounts_of(container)
        if name == "sidecar":
            assert "fedid-token" not in mounts, "a mount over the container's own path was added"
            assert mounts["cache"]["mountPath"] == MOUNT
        else:
            assert mounts["fedid-token"]["mountPath"] == MOUNT and mounts["fedid-token"]["readOnly"] is True, name
        assert mounts["fedid-token-request"]["mountPath"] == REQUEST_MOUNT, name
        assert mounts["fedid-token-request"]["readOnly"] is True, name
        env = env_of(container)
        # The variable the pod sets itself is kept.
        wanted = {**expected_env, "FEDID_TOKEN_FILE": "/mine"} if name == "build" else expected_env
        assert {key: env.get(key) for key in expected_env} == wanted, name

    second = create_pod(cluster, namespace, manifest)
    assert generated_for("builder", secret_name_of(second)), secret_name_of(second)
    assert secret_name_of(second) != secret_name, "two pods share one Secret name"
    # The pod's own choice of Secret name, when valid, is kept.
    chosen = create_pod(
        cluster, namespace, pod_manifest(identity="builder", annotations={"fedid.dev/secret-name": "builder-mine"})
    )
    assert secret_name_of(chosen) == "builder-mine"
    assert volumes_of(chosen)["fedid-token"]["secret"]["secretName"] == "builder-mine"


def test_a_pod_without_the_label_is_never_sent_to_the_webhook(cluster: Cluster, pods: PodServer) -> None:
    namespace = new_namespace(cluster, "unlabelled")
    create_identity(cluster, namespace, "ci", {})
    operator = pods.operator

    def reviews(outcome: str | None = None) -> float:
        return operator.metric("fedid_webhook_reviews_total", {"outcome": outcome} if outcome else None)

    before, mutated_before = reviews(), reviews("mutated")
    create_pod(cluster, namespace, pod_manifest(identity="ci"))
    # The review is counted before the webhook answers, so before the create returns.
    assert reviews("mutated") == mutated_before + 1
    assert reviews() == before + 1

    counted = reviews()
    plain = create_pod(cluster, namespace, pod_manifest(labels={"app": "web"}))
    assert reviews() == counted, "a pod without the fedid.dev/identity label was sent to the webhook"
    assert "fedid.dev/secret-name" not in (plain["metadata"].get("annotations") or {})
    assert "fedid-token" not in volumes_of(plain)


def test_with_the_webhook_down_labelled_pods_are_refused_and_others_created(
    cluster: Cluster, pods: PodServer
) -> None:
    namespace = new_namespace(cluster, "down")
    create_identity(cluster, namespace, "ci", {})
    pods.operator.stop()
    try:
        refused = try_create_pod(cluster, namespace, pod_manifest(name="labelled", identity="ci"))
        assert refused.returncode != 0, "a labelled pod was created without the webhook"
        assert 'failed calling webhook "pods.fedid.dev"' in refused.stderr, refused.stderr
        assert "connection refused" in refused.stderr, refused.stderr
        assert absent(cluster, "pod", "labelled", namespace)
        create_pod(cluster, namespace, pod_manifest(name="unlabelled"))
    finally:
        pods.restart()
    # Once fedid is ready again, the webhook answers from the start.
    back = create_pod(cluster, namespace, pod_manifest(name="labelled", identity="ci"))
    assert generated_for("ci", secret_name_of(back)), secret_name_of(back)
    wait_for_pod_secret(cluster, back)


def test_pods_that_cannot_use_the_identity_they_name_are_refused_at_create(
    cluster: Cluster, pods: PodServer
) -> None:
    namespace = new_namespace(cluster, "denied")
    cluster.kubectl("create", "serviceaccount", "ci-runner", "-n", namespace)
    create_identity(cluster, namespace, "plain", None)
    create_identity(cluster, namespace, "ci", {"serviceAccounts": ["ci-runner"]})
    denied_before = pods.operator.metric("fedid_webhook_reviews_total", {"outcome": "denied"})

    cases = [
        (pod_manifest(name="missing", identity="nope"),
         f"label fedid.dev/identity=nope names no FederatedIdentity in namespace {namespace}"),
        (pod_manifest(name="no-pods", identity="plain"),
         f"FederatedIdentity {namespace}/plain has no spec.pods"),
        (pod_manifest(name="wrong-account", identity="ci"),
         "service account default may not use FederatedIdentity ci"),
    ]
    for manifest, message in cases:
        refused = try_create_pod(cluster, namespace, manifest)
        assert refused.returncode != 0, f"created: {manifest}"
        assert 'admission webhook "pods.fedid.dev" denied the request' in refused.stderr, refused.stderr
        assert message in refused.stderr, refused.stderr
    for name in ("missing", "no-pods", "wrong-account"):
        assert absent(cluster, "pod", name, namespace)
    assert pods.operator.metric("fedid_webhook_reviews_total", {"outcome": "denied"}) == denied_before + 3
    # The allowed service account is let in.
    create_pod(cluster, namespace, pod_manifest(name="allowed", identity="ci", service_account="ci-runner"))


# --- the pod controller --------------------------------------------------------------------


def test_a_pods_secret_is_owned_by_it_refreshed_while_live_and_removed_when_it_ends(
    cluster: Cluster, pods: PodServer
) -> None:
    namespace = new_namespace(cluster, "lifecycle")
    operator = pods.operator
    identity = create_identity(
        cluster, namespace, "deploy", {},
        audiences=["sts.amazonaws.com", "vault"], lifetime="30s",
        claims=[{"name": "repository", "string": "acme/web"}],
    )
    ready = condition(identity)
    assert ready["status"] == "True" and ready["reason"] == "PodTemplate"
    issued_before = operator.metric("fedid_pod_tokens_issued_total", {"issuer": ISSUER})

    pod = create_pod(cluster, namespace, pod_manifest(name="job-1", identity="deploy"))
    secret = wait_for_pod_secret(cluster, pod)
    metadata = secret["metadata"]
    [owner] = metadata["ownerReferences"]
    assert {key: owner.get(key) for key in ("apiVersion", "kind", "name", "uid", "controller")} == {
        "apiVersion": "v1", "kind": "Pod", "name": "job-1", "uid": pod["metadata"]["uid"], "controller": True,
    }
    assert metadata["labels"]["app.kubernetes.io/managed-by"] == "fedid"
    assert metadata["labels"]["fedid.dev/identity"] == "deploy"
    assert {"token", "expires-at"} <= set(secret["decoded"])

    first = secret["decoded"]["token"]
    claims = verify_token(operator, first, operator.issuer_url(ISSUER), "vault")
    assert claims["aud"] == ["sts.amazonaws.com", "vault"]
    assert claims["sub"] == f"system:fedid:{namespace}:deploy"
    assert claims["namespace"] == namespace and claims["identity"] == "deploy"
    assert claims["pod"] == "job-1" and claims["pod_uid"] == pod["metadata"]["uid"]
    assert claims["service_account"] == "default"
    assert claims["repository"] == "acme/web"
    assert claims["exp"] - claims["iat"] == 30

    issued = wait_for("a Normal Issued Event on the pod", lambda: event(cluster, namespace, "job-1", "Issued", "Normal"))
    assert metadata["name"] in issued["message"]
    assert operator.metric("fedid_pod_tokens_issued_total", {"issuer": ISSUER}) >= issued_before + 1
    # The identity is a template only: it writes no Secret of its own.
    assert absent(cluster, "secret", "deploy-token", namespace)
    assert condition(get_json(cluster, "fid", "deploy", "-n", namespace))["reason"] == "PodTemplate"

    # While the pod lives (Pending, then Running), its token is refreshed before it expires.
    set_phase(cluster, namespace, "job-1", "Running")

    def refreshed() -> str | None:
        token = secret_data(cluster, namespace, metadata["name"])["decoded"]["token"]
        return token if token != first else None

    second = wait_for("the pod's token to be refreshed", refreshed, timeout=45)
    refreshed_claims = verify_token(operator, second, operator.issuer_url(ISSUER), "vault")
    assert refreshed_claims["jti"] != claims["jti"]
    assert refreshed_claims["iat"] > claims["iat"]
    assert refreshed_claims["iat"] < claims["exp"] - 4, "refreshed too late: within the margin before expiry"
    assert refreshed_claims["pod_uid"] == pod["metadata"]["uid"]

    # When the pod ends, its Secret goes.
    set_phase(cluster, namespace, "job-1", "Succeeded")
    wait_for("the Secret of the finished pod to be deleted", lambda: absent(cluster, "secret", metadata["name"], namespace))

    # A deleted pod's Secret is garbage-collected with it.
    other = create_pod(cluster, namespace, pod_manifest(name="job-2", identity="deploy"))
    other_secret = wait_for_pod_secret(cluster, other)["metadata"]["name"]
    cluster.kubectl("delete", "pod", "job-2", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(
        "the garbage collector to delete the deleted pod's Secret",
        lambda: absent(cluster, "secret", other_secret, namespace),
        timeout=60,
    )


def test_only_pods_that_may_pull_get_the_token_endpoint(cluster: Cluster, pods: PodServer) -> None:
    namespace = new_namespace(cluster, "pull-or-not")
    create_identity(cluster, namespace, "pushed", {})
    create_identity(cluster, namespace, "pulls", {"allowedAudiences": ["vault.example.com"]})
    pushed = create_pod(cluster, namespace, pod_manifest(name="pushed", identity="pushed"))
    pulls = create_pod(cluster, namespace, pod_manifest(name="pulls", identity="pulls"))

    # Without spec.pods.allowedAudiences: the Secret's token only, nothing of the endpoint.
    assert "fedid-token-request" not in volumes_of(pushed)
    [container] = pushed["spec"]["containers"]
    assert "fedid-token-request" not in mounts_of(container)
    assert env_of(container)["FEDID_TOKEN_FILE"] == f"{MOUNT}/token"
    assert not {"FEDID_TOKEN_URL", "FEDID_TOKEN_CA_FILE"} & set(env_of(container))
    assert set(wait_for_pod_secret(cluster, pushed)["decoded"]) == {"token", "expires-at"}, (
        "the token endpoint's CA was written for a pod that may not use the endpoint"
    )

    # With it: the endpoint's CA next to the token, where FEDID_TOKEN_CA_FILE points.
    assert "fedid-token-request" in volumes_of(pulls)
    secret = wait_for_pod_secret(cluster, pulls)
    assert set(secret["decoded"]) == {"token", "expires-at", "token-request-ca.crt"}
    assert secret["decoded"]["token-request-ca.crt"] == pods.ca.read_text()


@pytest.mark.parametrize("preset", ["tekton", "argo-workflows", "gitlab", "buildkite", "jenkins"])
def test_each_ci_preset_puts_its_jobs_claims_into_the_pods_token(
    cluster: Cluster, pods: PodServer, preset: str
) -> None:
    expected = json.loads((FIXTURES / "expected.json").read_text())[preset]
    namespace = new_namespace(cluster, f"preset-{preset}")
    cluster.kubectl("create", "serviceaccount", "ci-runner", "-n", namespace)
    create_identity(cluster, namespace, "ci", {"preset": preset, "serviceAccounts": ["ci-runner"]})

    pod = create_fixture_pod(cluster, namespace, FIXTURES / f"{preset}.yaml")
    for container in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
        assert env_of(container)["FEDID_TOKEN_FILE"] == f"{MOUNT}/token", container["name"]
        assert mounts_of(container)["fedid-token"]["mountPath"] == MOUNT, container["name"]
    secret = wait_for_pod_secret(cluster, pod)
    claims = verify_token(pods.operator, secret["decoded"]["token"], pods.operator.issuer_url(ISSUER), "sts.example.com")
    assert claims["namespace"] == namespace and claims["identity"] == "ci"
    assert claims["sub"] == f"system:fedid:{namespace}:ci"
    own = {name: value for name, value in claims.items() if name not in STANDARD_CLAIMS}
    assert own == {
        **expected,
        "pod": pod["metadata"]["name"],
        "pod_uid": pod["metadata"]["uid"],
        "service_account": "ci-runner",
    }


def test_a_pod_missing_a_required_claim_gets_no_token_and_a_warning(cluster: Cluster, pods: PodServer) -> None:
    namespace = new_namespace(cluster, "required")
    create_identity(
        cluster, namespace, "ci",
        {"claims": [{"name": "job", "fromLabel": "example.com/job", "required": True},
                    {"name": "ref", "fromAnnotation": "example.com/ref"}]},
    )
    pod = create_pod(cluster, namespace, pod_manifest(name="no-job", identity="ci"))
    warning = wait_for(
        "a MissingPodClaim Warning Event on the pod",
        lambda: event(cluster, namespace, "no-job", "MissingPodClaim", "Warning"),
    )
    assert "example.com/job" in warning["message"], warning["message"]
    assert absent(cluster, "secret", secret_name_of(pod), namespace)

    # With the label, the claim is in the token (and the optional one, missing, is left out).
    labelled = create_pod(
        cluster, namespace, pod_manifest(name="with-job", identity="ci", labels={"example.com/job": "build"})
    )
    claims = verify_token(
        pods.operator, wait_for_pod_secret(cluster, labelled)["decoded"]["token"],
        pods.operator.issuer_url(ISSUER), "sts.example.com",
    )
    assert claims["job"] == "build" and "ref" not in claims
    assert absent(cluster, "secret", secret_name_of(pod), namespace)


# --- the token endpoint --------------------------------------------------------------------


def run_token_request(pods: PodServer, workdir: Path, token: str, audience: str) -> subprocess.CompletedProcess[str]:
    token_file = workdir / "sa-token"
    token_file.write_text(token)
    env = {key: value for key, value in os.environ.items() if not key.startswith("FEDID_")}
    return subprocess.run(
        [str(pods.operator.binary), "token", "request", "--audience", audience, "--url", pods.token_url,
         "--token-file", str(token_file), "--ca-file", str(pods.ca)],
        capture_output=True, text=True, env=env, timeout=30,
    )


def test_a_pod_pulls_tokens_for_allowed_audiences_and_everything_else_is_refused(
    cluster: Cluster, pods: PodServer, tmp_path: Path
) -> None:
    namespace = new_namespace(cluster, "pull")
    elsewhere = new_namespace(cluster, "pull-elsewhere", allowed=False)
    operator = pods.operator
    pull = {"allowedAudiences": ["vault.example.com"]}
    create_identity(cluster, namespace, "puller", pull, claims=[{"name": "team", "string": "payments"}])
    create_identity(cluster, elsewhere, "puller", pull, reason="NamespaceNotAllowed")
    pod = create_pod(cluster, namespace, pod_manifest(name="puller", identity="puller"))
    # The pod's Secret holds the CA of the endpoint, where FEDID_TOKEN_CA_FILE points.
    secret = wait_for_pod_secret(cluster, pod)
    assert secret["decoded"]["token-request-ca.crt"] == pods.ca.read_text()
    bearer = pod_token(cluster, pod)
    issued_before = operator.metric("fedid_token_requests_total", {"outcome": "issued"})

    answer = pods.request_token(bearer, {"audience": "vault.example.com", "lifetime": "15m"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    claims = verify_token(operator, answer.json()["token"], operator.issuer_url(ISSUER), "vault.example.com")
    # The requested audience only, not the identity's (one audience: a string, as in every fedid token).
    assert claims["aud"] == "vault.example.com"
    assert answer.json()["expires_in"] == 15 * 60
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert claims["sub"] == f"system:fedid:{namespace}:puller"
    assert (claims["namespace"], claims["identity"], claims["pod"], claims["pod_uid"], claims["service_account"]) == (
        namespace, "puller", "puller", pod["metadata"]["uid"], "default",
    )
    assert claims["team"] == "payments"
    assert operator.metric("fedid_token_requests_total", {"outcome": "issued"}) == issued_before + 1

    # An audience the identity does not allow.
    status, error, description = refusal(pods.request_token(bearer, {"audience": "sts.example.com"}))
    assert (status, error) == (400, "invalid_target"), description
    assert "spec.pods.allowedAudiences" in description

    # A pod of a namespace the issuer does not allow.
    outsider = create_pod(cluster, elsewhere, pod_manifest(name="outsider", identity="puller"))
    status, error, description = refusal(pods.request_token(pod_token(cluster, outsider), {"audience": "vault.example.com"}))
    assert (status, error) == (403, "access_denied"), description
    assert elsewhere in description, description

    # A pod that did not opt in.
    plain = create_pod(cluster, namespace, pod_manifest(name="plain"))
    status, error, description = refusal(pods.request_token(pod_token(cluster, plain), {"audience": "vault.example.com"}))
    assert (status, error) == (403, "access_denied"), description
    assert "has not opted into fedid" in description

    # A pod that finished.
    finished = create_pod(cluster, namespace, pod_manifest(name="finished", identity="puller"))
    finished_token = pod_token(cluster, finished)
    set_phase(cluster, namespace, "finished", "Succeeded")

    def refused_finished() -> tuple[int, str, str] | None:
        response = pods.request_token(finished_token, {"audience": "vault.example.com"})
        # (A Response is falsy when its status is an error: return the tuple.)
        return refusal(response) if response.status_code != 200 else None

    status, error, description = wait_for("the token endpoint to refuse the finished pod", refused_finished, timeout=30)
    assert (status, error) == (403, "access_denied"), description
    assert "has finished" in description

    # A service-account token that is not bound to a pod.
    unbound = cluster.kubectl("create", "token", "default", "-n", namespace, "--audience", TOKEN_REQUEST_AUDIENCE).stdout.strip()
    status, error, description = refusal(pods.request_token(unbound, {"audience": "vault.example.com"}))
    assert (status, error) == (403, "access_denied"), description
    assert "not bound to a pod" in description

    # No credentials fedid accepts at all.
    wrong_audience = pod_token(cluster, pod, audience="https://kubernetes.default.svc")
    for credential in (None, "not-a-token", wrong_audience):
        response = pods.request_token(credential, {"audience": "vault.example.com"})
        status, error, description = refusal(response)
        assert (status, error) == (401, "invalid_client"), (credential and credential[:10], description)
        assert response.headers.get("WWW-Authenticate") == "Bearer"
    status, error, _ = refusal(pods.request_token(bearer, {"lifetime": "15m"}))
    assert (status, error) == (400, "invalid_request")

    # The CLI a job runs in the pod.
    printed = run_token_request(pods, tmp_path, bearer, "vault.example.com")
    assert printed.returncode == 0, printed.stderr
    verify_token(operator, printed.stdout.strip(), operator.issuer_url(ISSUER), "vault.example.com")
    refused = run_token_request(pods, tmp_path, bearer, "sts.example.com")
    assert refused.returncode != 0 and not refused.stdout.strip()
    assert "is not in spec.pods.allowedAudiences of FederatedIdentity puller" in refused.stderr, refused.stderr
    assert not jwts_in(refused.stderr)


def test_a_pod_asking_faster_than_its_budget_is_told_to_slow_down(cluster: Cluster, pods: PodServer) -> None:
    namespace = new_namespace(cluster, "budget")
    create_identity(cluster, namespace, "puller", {"allowedAudiences": ["vault.example.com"]})
    pod = create_pod(cluster, namespace, pod_manifest(name="eager", identity="puller"))
    bearer = pod_token(cluster, pod)
    pods.restart("--token-request-qps", "0.5", "--token-request-burst", "2")
    try:
        slowed_before = pods.operator.metric("fedid_token_requests_total", {"outcome": "slow_down"})
        answers = [pods.request_token(bearer, {"audience": "vault.example.com"}) for _ in range(3)]
        assert [answer.status_code for answer in answers[:2]] == [200, 200], [a.text for a in answers]
        status, error, description = refusal(answers[2])
        assert (status, error) == (429, "slow_down"), description
        assert 1 <= int(answers[2].headers["Retry-After"]) <= 2
        assert pods.operator.metric("fedid_token_requests_total", {"outcome": "slow_down"}) == slowed_before + 1
    finally:
        pods.restart()


def test_the_token_of_a_deleted_pod_is_refused_as_access_denied(cluster: Cluster, pods: PodServer) -> None:
    namespace = new_namespace(cluster, "pull-deleted")
    create_identity(cluster, namespace, "puller", {"allowedAudiences": ["vault.example.com"]})
    gone = create_pod(cluster, namespace, pod_manifest(name="gone", identity="puller"))
    gone_token = pod_token(cluster, gone)
    cluster.kubectl("delete", "pod", "gone", "-n", namespace, "--wait=true", "--timeout=60s")
    # The apiserver has invalidated the token with its pod (TokenReview: "service account token
    # has been invalidated"): the caller is a pod that no longer exists, not an unknown client.
    status, error, description = refusal(pods.request_token(gone_token, {"audience": "vault.example.com"}))
    assert (status, error) == (403, "access_denied"), description


def test_an_identity_that_becomes_a_pod_template_removes_its_shared_token(
    cluster: Cluster, pods: PodServer
) -> None:
    namespace = new_namespace(cluster, "template")
    create_identity(cluster, namespace, "shared", None)
    shared = wait_for(
        "the identity's own Secret",
        lambda: cluster.kubectl("get", "secret", "shared-token", "-n", namespace, check=False).returncode == 0 or None,
    )
    assert shared
    cluster.kubectl(
        "patch", "fid", "shared", "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {"pods": {}}})
    )
    identity = wait_for_reason(cluster, namespace, "shared", "PodTemplate")
    wait_for("the shared token Secret to be deleted", lambda: absent(cluster, "secret", "shared-token", namespace))
    status = identity["status"]
    assert "secretName" not in status and "expiresAt" not in status, status
    assert status["issuer"] == ISSUER


def test_a_pods_token_is_revoked_within_seconds_when_its_namespace_loses_the_right(
    cluster: Cluster, pods: PodServer
) -> None:
    # The token lasts an hour: its renewal, the pod's next pass without a trigger, is ~40 min away.
    namespace = new_namespace(cluster, "revoke")
    create_identity(cluster, namespace, "deploy", {}, lifetime="1h")
    pod = create_pod(cluster, namespace, pod_manifest(name="job-1", identity="deploy"))
    secret_name = wait_for_pod_secret(cluster, pod)["metadata"]["name"]

    # The issuer selects namespaces by label: the namespace stops matching.
    cluster.kubectl("label", "namespace", namespace, "--overwrite", f"{RUN_LABEL}={NOT_ALLOWED}")
    wait_for("the pod's token Secret to be revoked", lambda: absent(cluster, "secret", secret_name, namespace),
             timeout=30)
    wait_for("a Warning NamespaceNotAllowed Event on the pod",
             lambda: event(cluster, namespace, "job-1", "NamespaceNotAllowed", "Warning"), timeout=30)

    # The right comes back: so does the pod's token, without waiting for a renewal either.
    cluster.kubectl("label", "namespace", namespace, "--overwrite", f"{RUN_LABEL}={RUN}")
    restored = wait_for_pod_secret(cluster, pod, timeout=30)
    claims = verify_token(pods.operator, restored["decoded"]["token"], pods.operator.issuer_url(ISSUER), "sts.example.com")
    assert claims["pod_uid"] == pod["metadata"]["uid"]
