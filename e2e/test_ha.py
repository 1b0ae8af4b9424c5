"""High availability: two `fedid run` processes against one cluster.

One leads (holds the Lease) and only it writes; SIGKILL it and the other takes
over within the lease duration; across the handover no identity's token is
written twice for one renewal or lapses, and both replicas serve identical JWKS.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
import uuid
from typing import Iterator

import jwt
import pytest

from conftest import Cluster, wait_for
from fedid_harness import Operator, get_json, replica_set

RUN = uuid.uuid4().hex[:6]
OPERATOR_NS = f"fedid-ha-{RUN}"
TEAM = f"ha-team-{RUN}"
ISSUER = f"ha-{RUN}"
LEASE_SECONDS = 6
IDENTITIES = [f"job-{n}" for n in range(4)]


def lease_holder(cluster: Cluster) -> str | None:
    result = cluster.kubectl(
        "get", "lease", "fedid-leader", "-n", OPERATOR_NS, "-o", "jsonpath={.spec.holderIdentity}", check=False
    )
    return result.stdout.strip() or None if result.returncode == 0 else None


@pytest.fixture(scope="module")
def replicas(cluster: Cluster) -> Iterator[dict[str, Operator]]:
    with replica_set(cluster, OPERATOR_NS, [TEAM], ["replica-a", "replica-b"], ISSUER, [TEAM],
                     LEASE_SECONDS) as operators:
        yield operators


def jwks(operator: Operator) -> dict:
    response = operator.get(f"/issuers/{ISSUER}/.well-known/jwks.json")
    response.raise_for_status()
    return response.json()


def test_one_leader_writes_and_a_standby_takes_over(cluster: Cluster, replicas: dict[str, Operator]) -> None:
    for name in IDENTITIES:
        identity = {
            "apiVersion": "fedid.dev/v1alpha1",
            "kind": "FederatedIdentity",
            "metadata": {"name": name, "namespace": TEAM},
            "spec": {"issuerRef": ISSUER, "audiences": ["sts.example.com"], "lifetime": "30s"},
        }
        cluster.apply(json.dumps(identity))
    for name in IDENTITIES:
        cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")

    leader_name = wait_for("a leader", lambda: lease_holder(cluster), timeout=30)
    assert leader_name in replicas
    leader = replicas[leader_name]
    [standby] = [operator for name, operator in replicas.items() if name != leader_name]
    # Both serve the same keys; only the leader has written anything.
    assert jwks(leader) == jwks(standby)
    assert leader.metric("fedid_tokens_issued_total") >= len(IDENTITIES)
    assert standby.metric("fedid_tokens_issued_total") == 0
    assert standby.metric("fedid_reconciles_total") == 0

    # Record every version of every identity's Secret from here on.
    watch = subprocess.Popen(
        [str(cluster.bin / "kubectl"), "get", "secrets", "-n", TEAM, "-l", "fedid.dev/identity", "--watch",
         "-o", "jsonpath={.metadata.name} {.data.token}{\"\\n\"}"],
        stdout=subprocess.PIPE, text=True, env=cluster.env(),
    )
    try:
        keys_before = jwks(leader)
        leader.kill()
        killed_at = time.monotonic()
        wait_for("the standby to take the Lease", lambda: lease_holder(cluster) == standby.name, timeout=30)
        takeover = time.monotonic() - killed_at
        # The Lease expires LEASE_SECONDS after the last renewal; the standby retries every second.
        assert takeover <= LEASE_SECONDS + 3, f"takeover took {takeover:.1f}s"
        handover = int(time.time())

        def all_refreshed_by_new_leader() -> bool:
            for name in IDENTITIES:
                token = get_json(cluster, "secret", f"{name}-token", "-n", TEAM)["data"]["token"]
                claims = jwt.decode(base64.b64decode(token), options={"verify_signature": False})
                if claims["iat"] <= handover:
                    return False
            return True

        wait_for("every identity to be refreshed by the new leader", all_refreshed_by_new_leader, timeout=60)
        assert jwks(standby) == keys_before, "the JWKS changed across the handover"
        assert standby.metric("fedid_tokens_issued_total") >= len(IDENTITIES)
    finally:
        watch.send_signal(signal.SIGTERM)
        seen, _ = watch.communicate(timeout=10)

    versions: dict[str, list[dict]] = {}
    for line in seen.splitlines():
        if not line.strip():
            continue
        name, token = line.split(" ", 1)
        claims = jwt.decode(base64.b64decode(token), options={"verify_signature": False})
        history = versions.setdefault(name, [])
        if not history or history[-1]["jti"] != claims["jti"]:
            history.append(claims)
    assert set(versions) == {f"{name}-token" for name in IDENTITIES}, "one Secret per identity, no other"
    for name, history in versions.items():
        assert len(history) >= 2, f"{name} was never refreshed: {history}"
        for earlier, later in zip(history, history[1:]):
            assert later["iat"] < earlier["exp"], f"{name}: the token lapsed before it was replaced"
            assert later["iat"] - earlier["iat"] >= 15, f"{name}: two tokens written for one renewal"
