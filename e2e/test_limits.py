"""Names at Kubernetes' length limits and many identities in one namespace, with fedid running
as the chart's ServiceAccount.

- A 63-character namespace and a 253-character identity name (the longest the apiserver
  accepts): the default Secret name (`<name>-token`, 259 characters) cannot exist, so the identity
  says so (`InvalidSecretName`) and writes nothing; with `spec.secretName` it is issued, and the
  Secret's `fedid.dev/identity` label (at most 63 characters) is a prefix of the name plus a hash.
- IDENTITIES identities in one namespace, applied as one List: every one Ready with its own
  Secret, and a sample of the tokens verify against the served JWKS.
"""

from __future__ import annotations

import json
import uuid
from typing import Iterator

import pytest

from conftest import Cluster, wait_for
from fedid_harness import (
    Operator,
    chart_operator,
    condition,
    create_issuer,
    get_json,
    identity_manifest,
    secret_data,
    verify_token,
)

RUN = uuid.uuid4().hex[:6]
# 63 characters: the longest namespace name.
LONG_NAMESPACE = f"limits-{RUN}-" + "n" * (63 - len(f"limits-{RUN}-"))
CROWDED = f"limits-crowded-{RUN}"
ISSUER = f"limits-{RUN}"
AUDIENCE = "sts.example.com"
IDENTITIES = 1000
# 253 characters: the longest object name.
LONG_NAME = "a" * 240 + f"-{RUN}" + "z" * (253 - 240 - 1 - len(RUN))


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    with chart_operator(cluster, "fedid-limits", [LONG_NAMESPACE, CROWDED]) as running:
        create_issuer(cluster, running, ISSUER, [LONG_NAMESPACE, CROWDED])
        yield running
    cluster.kubectl("delete", "identityissuer", ISSUER, "--wait=false", check=False)
    for namespace in (LONG_NAMESPACE, CROWDED):
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def identity(namespace: str, name: str, **spec: object) -> dict:
    return identity_manifest(namespace, name, ISSUER, AUDIENCE, **spec)


def test_names_at_the_length_limits(cluster: Cluster, operator: Operator) -> None:
    assert len(LONG_NAMESPACE) == 63 and len(LONG_NAME) == 253
    cluster.apply(json.dumps(identity(LONG_NAMESPACE, LONG_NAME)))

    def refused() -> dict | None:
        ready = condition(get_json(cluster, "fid", LONG_NAME, "-n", LONG_NAMESPACE))
        return ready if ready and ready.get("reason") == "InvalidSecretName" else None

    ready = wait_for("InvalidSecretName for the defaulted Secret name", refused, timeout=60)
    assert ready["status"] == "False" and f"{LONG_NAME}-token" in ready["message"], ready
    assert "253" in ready["message"], ready

    cluster.apply(json.dumps(identity(LONG_NAMESPACE, LONG_NAME, secretName="long-named-token")))
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{LONG_NAME}", "-n", LONG_NAMESPACE, "--timeout=60s")
    secret = secret_data(cluster, LONG_NAMESPACE, "long-named-token")
    label = secret["metadata"]["labels"]["fedid.dev/identity"]
    assert len(label) <= 63 and label.startswith("a" * 40), label
    [owner] = secret["metadata"]["ownerReferences"]
    assert owner["name"] == LONG_NAME
    claims = verify_token(operator, secret["decoded"]["token"], operator.issuer_url(ISSUER), AUDIENCE)
    assert (claims["namespace"], claims["identity"]) == (LONG_NAMESPACE, LONG_NAME)
    assert claims["sub"] == f"system:fedid:{LONG_NAMESPACE}:{LONG_NAME}"


def test_a_thousand_identities_in_one_namespace(cluster: Cluster, operator: Operator) -> None:
    items = [identity(CROWDED, f"job-{n:04d}") for n in range(IDENTITIES)]
    for start in range(0, IDENTITIES, 250):
        cluster.apply(json.dumps({"apiVersion": "v1", "kind": "List", "items": items[start:start + 250]}))

    def all_ready() -> bool:
        listed = get_json(cluster, "fid", "-n", CROWDED)["items"]
        return len(listed) == IDENTITIES and all((condition(i) or {}).get("status") == "True" for i in listed)

    wait_for(f"all {IDENTITIES} identities Ready", all_ready, timeout=600, interval=2)
    secrets = get_json(cluster, "secrets", "-n", CROWDED, "-l", "fedid.dev/identity")["items"]
    assert sorted(s["metadata"]["name"] for s in secrets) == [f"job-{n:04d}-token" for n in range(IDENTITIES)]
    for n in (0, IDENTITIES // 2, IDENTITIES - 1):
        secret = secret_data(cluster, CROWDED, f"job-{n:04d}-token")
        claims = verify_token(operator, secret["decoded"]["token"], operator.issuer_url(ISSUER), AUDIENCE)
        assert claims["identity"] == f"job-{n:04d}"
