"""An apiserver outage under two replicas: kube-apiserver is frozen (SIGSTOP: its port accepts
connections that never answer, as a partitioned or overloaded apiserver does) for 40 s. The
replicas keep serving discovery and JWKS from memory and stay ready; the leader, unable to renew
its Lease, stops (its supervisor restarts it, as the kubelet would); once the apiserver is back, a
token that expired meanwhile is renewed at once and reported as a lapse (Warning Event
TokenLapsed, the Ready message, fedid_token_lapses_total), while valid tokens are not rewritten.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from typing import Iterator

import pytest

from conftest import Cluster, wait_for
from fedid_harness import Operator, condition, events_for, get_json, identity_manifest, jwks_served_by_any, replica_set

RUN = uuid.uuid4().hex[:6]
OPERATOR_NS = f"fedid-outage-{RUN}"
TEAM = f"outage-{RUN}"
ISSUER = f"outage-{RUN}"
LEASE_SECONDS = 6
OUTAGE_SECONDS = 40
STEADY = [f"steady-{n}" for n in range(5)]


@pytest.fixture(scope="module")
def replicas(cluster: Cluster) -> Iterator[dict[str, Operator]]:
    with replica_set(cluster, OPERATOR_NS, [TEAM], ["outage-a", "outage-b"], ISSUER, [TEAM],
                     LEASE_SECONDS, prepublish="0s") as operators:
        yield operators


def identity(cluster: Cluster, name: str, lifetime: str) -> None:
    cluster.apply(json.dumps(identity_manifest(TEAM, name, ISSUER, lifetime=lifetime)))


def lease_holder(cluster: Cluster) -> str | None:
    result = cluster.kubectl("get", "lease", "fedid-leader", "-n", OPERATOR_NS,
                             "-o", "jsonpath={.spec.holderIdentity}", check=False)
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def apiserver_pid(cluster: Cluster) -> int:
    return int((cluster.dir / "pids" / "kube-apiserver").read_text())


def served_anywhere(replicas: dict[str, Operator]) -> bool:
    return jwks_served_by_any(replicas.values(), ISSUER)


def test_an_outage_keeps_serving_renews_the_lapsed_and_rewrites_nothing_else(
    cluster: Cluster, replicas: dict[str, Operator]
) -> None:
    for name in STEADY:
        identity(cluster, name, "1h")
    identity(cluster, "short", "30s")
    for name in (*STEADY, "short"):
        cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    versions = {name: get_json(cluster, "secret", f"{name}-token", "-n", TEAM)["metadata"]["resourceVersion"]
                for name in STEADY}
    before = get_json(cluster, "fid", "short", "-n", TEAM)["status"]["expiresAt"]

    leader = wait_for("a leader", lambda: lease_holder(cluster))
    polls, failures = 0, 0
    ready_failures = 0
    pid = apiserver_pid(cluster)
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        while time.monotonic() - stopped_at < OUTAGE_SECONDS:
            polls += 1
            if not served_anywhere(replicas):
                failures += 1
            for operator in replicas.values():
                if operator.process is not None and operator.process.poll() is None:
                    try:
                        if operator.get("/readyz").status_code != 200:
                            ready_failures += 1
                    except Exception:  # noqa: BLE001
                        ready_failures += 1
            time.sleep(0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    exited = [name for name, operator in replicas.items()
              if operator.process is not None and operator.process.poll() is not None]
    print(f"\noutage: {polls} polls, {failures} with no replica serving JWKS, {ready_failures} /readyz failures; "
          f"exited during the outage: {exited}")
    assert failures == 0, f"{failures} of {polls} polls found no replica serving the JWKS"
    assert ready_failures == 0
    # The leader, whose Lease renewals hung, stepped down (the process exits) within its deadline;
    # the standby, which writes nothing, kept serving.
    assert exited == [leader], (exited, leader)
    wait_for("the apiserver back", lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
             timeout=60)
    # The supervisor's part: restart a replica that stopped.
    for name in exited:
        replicas[name].process = None
        replicas[name].start()

    def renewed() -> dict | None:
        found = get_json(cluster, "fid", "short", "-n", TEAM)
        ready = condition(found)
        if found["status"]["expiresAt"] != before and ready and ready["status"] == "True":
            return found["status"]
        return None
    status = wait_for("the lapsed token renewed", renewed, timeout=60)
    assert "lastLapseTime" in status, status
    lapses = wait_for("the TokenLapsed Event", lambda: [e for e in events_for(cluster, TEAM, "short")
                                                         if e.get("reason") == "TokenLapsed"] or None)
    assert lapses[0]["type"] == "Warning"
    counted = sum(operator.metric("fedid_token_lapses_total", {"issuer": ISSUER}) for operator in replicas.values())
    assert counted >= 1
    # Valid tokens were not rewritten on reconnect.
    for name in STEADY:
        cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=30s")
        now = get_json(cluster, "secret", f"{name}-token", "-n", TEAM)["metadata"]["resourceVersion"]
        assert now == versions[name], f"{name}'s Secret was rewritten after the outage"
