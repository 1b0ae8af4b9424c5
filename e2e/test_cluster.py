"""Smoke tests proving the local control plane is a real Kubernetes.

They check what fedid relies on later: CRD schema validation, garbage
collection through ownerReferences, ServiceAccount tokens verifiable against the
apiserver's JWKS, and helm.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import jwt

from conftest import Cluster, wait_for

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.fedid.dev
spec:
  group: smoke.fedid.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {type: integer, minimum: 1, maximum: 10}
"""


def widget(name: str, size: object) -> str:
    return json.dumps(
        {"apiVersion": "smoke.fedid.dev/v1", "kind": "Widget", "metadata": {"name": name, "namespace": "default"}, "spec": {"size": size}}
    )


def test_apiserver_reports_the_pinned_version(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    server = version["serverVersion"]
    assert server["gitVersion"].startswith("v1.")
    assert server["gitTreeState"] == "clean"
    assert "master" not in server["gitVersion"]
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_crd_schema_is_enforced(cluster: Cluster) -> None:
    cluster.apply(WIDGET_CRD)
    cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.smoke.fedid.dev", "--timeout=60s")
    name = f"w-{uuid.uuid4().hex[:8]}"
    # The first create may race the discovery cache; kubectl wait above covers Established.
    wait_for("a valid Widget to be accepted", lambda: cluster.apply(widget(name, 3)).returncode == 0)
    assert json.loads(cluster.kubectl("get", "widget", name, "-n", "default", "-o", "json").stdout)["spec"]["size"] == 3

    rejected = cluster.kubectl("apply", "-f", "-", input=widget(f"{name}-big", 11), check=False)
    assert rejected.returncode != 0
    assert "spec.size" in rejected.stderr and "should be less than or equal to 10" in rejected.stderr

    wrong_type = cluster.kubectl("apply", "-f", "-", input=widget(f"{name}-str", "large"), check=False)
    assert wrong_type.returncode != 0
    assert "spec.size" in wrong_type.stderr and "integer" in wrong_type.stderr


def test_garbage_collector_deletes_owned_secret(cluster: Cluster) -> None:
    owner_name = f"owner-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "configmap", owner_name, "-n", "default", "--from-literal=k=v")
    owner_uid = cluster.kubectl("get", "configmap", owner_name, "-n", "default", "-o", "jsonpath={.metadata.uid}").stdout
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{owner_name}-child",
            "namespace": "default",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner_name, "uid": owner_uid}],
        },
        "stringData": {"token": "not-a-secret"},
    }
    cluster.apply(json.dumps(secret))
    cluster.kubectl("delete", "configmap", owner_name, "-n", "default", "--wait=true")

    def secret_gone() -> bool:
        result = cluster.kubectl("get", "secret", f"{owner_name}-child", "-n", "default", check=False)
        return result.returncode != 0 and "NotFound" in result.stderr

    wait_for("the garbage collector to delete the owned Secret", secret_gone, timeout=60)


def test_service_account_token_verifies_against_served_jwks(cluster: Cluster) -> None:
    # The serviceaccount controller (kube-controller-manager) creates `default`.
    wait_for("the default ServiceAccount", lambda: cluster.kubectl("get", "sa", "default", "-n", "default", check=False).returncode == 0)
    token = cluster.kubectl("create", "token", "default", "-n", "default", "--audience", "x").stdout.strip()
    discovery = json.loads(cluster.kubectl("get", "--raw", "/.well-known/openid-configuration").stdout)
    jwks = json.loads(cluster.kubectl("get", "--raw", "/openid/v1/jwks").stdout)

    header = jwt.get_unverified_header(token)
    keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(jwks).keys}
    assert header["kid"] in keys, "the token's kid must be published in the JWKS"
    claims = jwt.decode(
        token,
        keys[header["kid"]].key,
        algorithms=["RS256"],
        audience="x",
        issuer=discovery["issuer"],
    )
    assert claims["sub"] == "system:serviceaccount:default:default"

    # The same token must fail for another audience or a tampered payload.
    try:
        jwt.decode(token, keys[header["kid"]].key, algorithms=["RS256"], audience="y")
        raise AssertionError("a token for audience x verified for audience y")
    except jwt.InvalidAudienceError:
        pass
    head, payload, signature = token.split(".")
    tampered = ".".join([head, payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1], signature])
    try:
        jwt.decode(tampered, keys[header["kid"]].key, algorithms=["RS256"], audience="x")
        raise AssertionError("a tampered token verified")
    except (jwt.InvalidSignatureError, jwt.DecodeError):
        pass


def test_helm_runs_from_the_cache(cluster: Cluster) -> None:
    result = subprocess.run([str(cluster.bin / "helm"), "version", "--short"], capture_output=True, text=True, env=cluster.env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("v4.")


def test_kwok_runs_from_the_cache(cluster: Cluster) -> None:
    result = subprocess.run([str(cluster.bin / "kwok"), "--version"], capture_output=True, text=True, env=cluster.env(), timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout


def test_controllers_act_with_their_own_service_accounts(cluster: Cluster) -> None:
    # kube-controller-manager runs each controller as its own ServiceAccount, with the
    # bootstrap RBAC roles: the deployment controller creates ReplicaSets, and the namespace
    # controller empties and removes a deleted namespace.
    namespace = f"kcm-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("create", "deployment", "web", "--image=registry.invalid/web:1", "-n", namespace)
    wait_for(
        "the deployment controller to create a ReplicaSet",
        lambda: json.loads(cluster.kubectl("get", "rs", "-n", namespace, "-o", "json").stdout)["items"],
    )
    cluster.kubectl("create", "configmap", "leftover", "-n", namespace)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")

    def namespace_gone() -> bool:
        result = cluster.kubectl("get", "namespace", namespace, check=False)
        return result.returncode != 0 and "NotFound" in result.stderr

    wait_for("the namespace controller to finish deleting the namespace", namespace_gone, timeout=90)
