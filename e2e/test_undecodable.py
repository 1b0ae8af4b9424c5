"""Objects the apiserver holds but fedid cannot decode, as a CRD upgrade leaves them: a
FederatedIdentity and an IdentityIssuer stored while their CRD had a looser schema (here:
`lifetime` as any string, `tokenLifetime` as any object), then the real CRD applied again. The
stored objects keep their undecodable values.

A watch that decoded every listed object as one batch would fail on them forever, and no other
identity in the cluster would ever be issued. fedid keeps them out of its caches instead: every
other identity is issued (whether the bad object was there before fedid started or arrived
while it ran), each bad object gets one Warning Event `InvalidObject` naming the field, and
`fedid_invalid_objects{kind}` counts them; fixed, the identity is issued and the count drops.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Iterator

import pytest
import yaml

from conftest import REPO_ROOT, Cluster, wait_for
from fedid_harness import (
    Operator,
    chart_operator,
    condition,
    create_issuer,
    events_for,
    get_json,
    identity_manifest,
)

RUN = uuid.uuid4().hex[:6]
TEAM = f"undecodable-{RUN}"
ISSUER = f"undecodable-{RUN}"
BAD_ISSUER = f"undecodable-bad-{RUN}"
IDENTITY_CRD = REPO_ROOT / "crds" / "federatedidentities.fedid.dev.yaml"
ISSUER_CRD = REPO_ROOT / "crds" / "identityissuers.fedid.dev.yaml"


def loosened(path, field_path: list[str]) -> str:
    """The CRD at `path` with the property at `field_path` (under the v1alpha1 schema's
    properties) relaxed to any string, or for `tokenLifetime` any object: the "older, looser
    schema"."""
    crd = yaml.safe_load(path.read_text())
    crd = copy.deepcopy(crd)
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    node = version["schema"]["openAPIV3Schema"]
    for name in field_path[:-1]:
        node = node["properties"][name]
    node["properties"][field_path[-1]] = (
        {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        if field_path[-1] == "tokenLifetime" else {"type": "string"})
    return yaml.safe_dump(crd)


def store_undecodable(cluster: Cluster, path, field_path: list[str], manifest: dict) -> None:
    """Creates `manifest` under the loosened CRD, then restores the real one."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=loosened(path, field_path))
    refusals: list[str] = []

    def created() -> bool:
        result = cluster.kubectl("create", "-f", "-", input=json.dumps(manifest), check=False)
        refusals.append(result.stderr.strip())
        return result.returncode == 0

    try:
        wait_for("the loose schema to be served", created, timeout=30)
    except BaseException:
        raise AssertionError(f"the loose schema refused the object: {refusals[-1:]}") from None
    finally:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))


def identity(name: str, lifetime: str) -> dict:
    return identity_manifest(TEAM, name, ISSUER, lifetime=lifetime)


def issued(cluster: Cluster, name: str) -> bool:
    fid = get_json(cluster, "fid", name, "-n", TEAM)
    ready = condition(fid) or {}
    return ready.get("status") == "True" and ready.get("reason") == "Issued"


def invalid_object_event(cluster: Cluster, namespace: str, name: str) -> dict | None:
    found = [e for e in events_for(cluster, namespace, name) if e.get("reason") == "InvalidObject"]
    return found[0] if found else None


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/federatedidentities.fedid.dev", "--timeout=60s")
    cluster.kubectl("create", "namespace", TEAM, check=False)
    # Stored before fedid starts: its first list holds the undecodable identity.
    store_undecodable(cluster, IDENTITY_CRD, ["spec", "lifetime"], identity("before", "forever"))
    try:
        with chart_operator(cluster, "fedid-undecodable", [TEAM]) as running:
            create_issuer(cluster, running, ISSUER, [TEAM])
            yield running
    finally:
        # Never leave an undecodable object for the modules after this one.
        cluster.kubectl("delete", "fid", "--all", "-n", TEAM, "--wait=false", check=False)
        cluster.kubectl("delete", "identityissuer", ISSUER, BAD_ISSUER, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", TEAM, "--wait=false", check=False)


def test_an_undecodable_identity_listed_at_start_stops_no_other(cluster: Cluster, operator: Operator) -> None:
    cluster.apply(json.dumps(identity("good", "1h")))
    wait_for("the good identity to be issued beside an undecodable one", lambda: issued(cluster, "good"), timeout=60)
    event = wait_for("the Warning Event on the undecodable identity",
                     lambda: invalid_object_event(cluster, TEAM, "before"), timeout=30)
    assert event["type"] == "Warning", event
    assert "lifetime" in event["message"] and "forever" in event["message"], event
    assert operator.metric("fedid_invalid_objects", {"kind": "FederatedIdentity"}) == 1
    assert absent_secret(cluster, "before-token")


def test_an_identity_that_becomes_undecodable_is_dropped_and_reported_once(cluster: Cluster, operator: Operator) -> None:
    store_undecodable(cluster, IDENTITY_CRD, ["spec", "lifetime"], identity("later", "tomorrow"))
    event = wait_for("the Warning Event on the identity stored while fedid runs",
                     lambda: invalid_object_event(cluster, TEAM, "later"), timeout=30)
    assert "tomorrow" in event["message"], event
    wait_for("both undecodable identities counted",
             lambda: operator.metric("fedid_invalid_objects", {"kind": "FederatedIdentity"}) == 2, timeout=30)
    # Still working for everyone else.
    cluster.apply(json.dumps(identity("after", "1h")))
    wait_for("a new identity to be issued", lambda: issued(cluster, "after"), timeout=60)
    # Reported once: the Event was not repeated for the same object version.
    [reported] = [e for e in events_for(cluster, TEAM, "later") if e.get("reason") == "InvalidObject"]
    assert (reported.get("count") or 1) == 1 and reported.get("series") is None, reported


def test_a_fixed_identity_is_issued_and_no_longer_counted(cluster: Cluster, operator: Operator) -> None:
    cluster.kubectl("patch", "fid", "before", "-n", TEAM, "--type=merge", "-p", '{"spec": {"lifetime": "1h"}}')
    wait_for("the fixed identity to be issued", lambda: issued(cluster, "before"), timeout=60)
    cluster.kubectl("delete", "fid", "later", "-n", TEAM)
    wait_for("no undecodable identity counted",
             lambda: operator.metric("fedid_invalid_objects", {"kind": "FederatedIdentity"}) == 0, timeout=30)


def test_an_undecodable_issuer_stops_no_other(cluster: Cluster, operator: Operator) -> None:
    bad = {
        "apiVersion": "fedid.dev/v1alpha1", "kind": "IdentityIssuer", "metadata": {"name": BAD_ISSUER},
        "spec": {"issuerURL": operator.issuer_url(BAD_ISSUER), "allowedNamespaces": {"names": [TEAM]},
                 "tokenLifetime": {"default": "a while"}},
    }
    store_undecodable(cluster, ISSUER_CRD, ["spec", "tokenLifetime"], bad)
    event = wait_for("the Warning Event on the undecodable issuer",
                     lambda: invalid_object_event(cluster, "default", BAD_ISSUER), timeout=30)
    assert "a while" in event["message"], event
    assert operator.metric("fedid_invalid_objects", {"kind": "IdentityIssuer"}) == 1
    # The good issuer still serves and issues.
    cluster.apply(json.dumps(identity("with-bad-issuer-around", "1h")))
    wait_for("an identity issued beside an undecodable issuer",
             lambda: issued(cluster, "with-bad-issuer-around"), timeout=60)
    assert operator.get(f"/issuers/{ISSUER}/.well-known/openid-configuration").status_code == 200


def absent_secret(cluster: Cluster, name: str) -> bool:
    return cluster.kubectl("get", "secret", name, "-n", TEAM, check=False).returncode != 0
