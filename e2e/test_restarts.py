"""The control plane restarted under two replicas, on a control plane of this module's own (so
that nothing here can break the session's): kube-apiserver stopped for 30 s (its port refuses
connections) and started again, then etcd stopped for 30 s and started again (the apiserver up
but failing every request that needs storage), each right after LOAD identities were created; and kube-apiserver again with the replicas in
namespaced mode (`--watch-namespaces` with two namespaces, the identities spread over both), where
every namespace's watch relists on its own into one merged cache.

Throughout, some replica serves the JWKS from memory and every running replica's `/readyz`
answers 200 (readiness is about serving, which needs no apiserver); afterwards (with the replicas that exited
started again, as the kubelet would) a token that expired meanwhile is renewed, an identity
created after the outage and every one of the LOAD identities is issued, and the tokens that
stayed valid are not rewritten.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from conftest import CLUSTER_DIR, Cluster, wait_for
from fedid_harness import Operator, condition, get_json, identity_manifest, jwks_served_by_any, replica_set

RUN = uuid.uuid4().hex[:6]
OPERATOR_NS = f"fedid-restarts-{RUN}"
TEAM = f"restarts-{RUN}"
# The second namespace of the namespaced case.
TEAM_B = f"restarts-b-{RUN}"
ISSUER = f"restarts-{RUN}"
LEASE_SECONDS = 6
DOWN_SECONDS = 30
# Identities created just before each outage, so that it begins while fedid is busy issuing.
LOAD = 100
STEADY = [f"steady-{n}" for n in range(3)]


@pytest.fixture(scope="module")
def own_cluster(cluster: Cluster) -> Iterator[Cluster]:
    state = Path(tempfile.mkdtemp(prefix="fedid-e2e-restarts-"))
    started = subprocess.run([str(CLUSTER_DIR / "up"), str(state)], capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, f"cluster/up failed:\n{started.stdout}\n{started.stderr}"
    try:
        yield Cluster(dir=state, bin=cluster.bin)
    finally:
        subprocess.run([str(CLUSTER_DIR / "down"), str(state)], timeout=120, check=False)


@pytest.fixture(scope="module")
def replicas(own_cluster: Cluster) -> Iterator[dict[str, Operator]]:
    with replica_set(own_cluster, OPERATOR_NS, [TEAM, TEAM_B], ["restarts-a", "restarts-b"], ISSUER,
                     [TEAM, TEAM_B], LEASE_SECONDS, prepublish="0s") as operators:
        yield operators


def identity(cluster: Cluster, name: str, lifetime: str, namespace: str = TEAM) -> None:
    cluster.apply(json.dumps(identity_manifest(namespace, name, ISSUER, lifetime=lifetime)))


def restart_with(replicas: dict[str, Operator], *flags: str) -> None:
    """Restarts every replica with its first arguments and `flags`."""
    for operator in replicas.values():
        operator.stop()
        base = operator.extra_args[:operator.extra_args.index("--watch-namespaces")] \
            if "--watch-namespaces" in operator.extra_args else operator.extra_args
        operator.extra_args = [*base, *flags]
        operator.start()


def served_anywhere(replicas: dict[str, Operator]) -> bool:
    return jwks_served_by_any(replicas.values(), ISSUER)


def stop_component(cluster: Cluster, name: str) -> list[str]:
    """Stops control-plane component `name` (SIGTERM, then SIGKILL) and returns its command line."""
    pid = int((cluster.dir / "pids" / name).read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return argv
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    return argv


def start_component(cluster: Cluster, name: str, argv: list[str]) -> None:
    """Starts `name` again with `argv`, as cluster/up did (own session, same log, pid file)."""
    log = open(cluster.dir / "logs" / f"{name}.log", "ab")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    (cluster.dir / "pids" / name).write_text(str(process.pid))


def outage(cluster: Cluster, replicas: dict[str, Operator], component: str) -> dict:
    """`component` down for DOWN_SECONDS while the JWKS is polled; returns what was seen."""
    argv = stop_component(cluster, component)
    polls, unserved, not_ready = 0, 0, 0
    try:
        began = time.monotonic()
        while time.monotonic() - began < DOWN_SECONDS:
            polls += 1
            if not served_anywhere(replicas):
                unserved += 1
            for operator in replicas.values():
                if operator.process is not None and operator.process.poll() is None:
                    try:
                        not_ready += operator.get("/readyz").status_code != 200
                    except Exception:  # noqa: BLE001 - it may be exiting after losing the Lease
                        not_ready += operator.process.poll() is None
            time.sleep(0.5)
    finally:
        start_component(cluster, component, argv)
    wait_for(f"the apiserver ready after {component} came back",
             lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0, timeout=120)
    exited = [name for name, operator in replicas.items()
              if operator.process is not None and operator.process.poll() is not None]
    # The supervisor's part: start a replica that stopped.
    for name in exited:
        replicas[name].process = None
        replicas[name].start()
    print(f"\n{component} down {DOWN_SECONDS} s: {polls} polls, {unserved} with no replica serving JWKS, "
          f"{not_ready} /readyz failures; exited: {exited}")
    return {"polls": polls, "unserved": unserved, "not_ready": not_ready, "exited": exited}


@pytest.mark.parametrize(("component", "namespaced"), [("kube-apiserver", False), ("etcd", False),
                                                     ("kube-apiserver", True)],
                         ids=["kube-apiserver", "etcd", "kube-apiserver-namespaced"])
def test_a_restarted_control_plane_component_costs_no_token(
    own_cluster: Cluster, replicas: dict[str, Operator], component: str, namespaced: bool
) -> None:
    cluster = own_cluster
    case = f"{component}{'-ns' if namespaced else ''}"
    # Namespaced: the short-lived token and half the load in the second namespace, whose watch
    # relists beside the first one's.
    other = TEAM_B if namespaced else TEAM
    if namespaced:
        restart_with(replicas, "--watch-namespaces", f"{TEAM},{TEAM_B}")
    try:
        check_an_outage(cluster, replicas, component, case, other)
    finally:
        if namespaced:
            restart_with(replicas)


def check_an_outage(cluster: Cluster, replicas: dict[str, Operator], component: str, case: str, other: str) -> None:
    for name in STEADY:
        identity(cluster, name, "1h")
    short = f"short-{case}"
    identity(cluster, short, "30s", other)
    for name in STEADY:
        cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{short}", "-n", other, "--timeout=60s")
    versions = {name: get_json(cluster, "secret", f"{name}-token", "-n", TEAM)["metadata"]["resourceVersion"]
                for name in STEADY}
    before = get_json(cluster, "fid", short, "-n", other)["status"]["expiresAt"]

    load = [identity_manifest(TEAM if n % 2 else other, f"load-{case}-{n}", ISSUER, lifetime="1h")
            for n in range(LOAD)]
    cluster.apply(json.dumps({"apiVersion": "v1", "kind": "List", "items": load}))

    seen = outage(cluster, replicas, component)
    assert seen["unserved"] == 0, f"{seen['unserved']} of {seen['polls']} polls found no replica serving the JWKS"
    assert seen["not_ready"] == 0, f"{seen['not_ready']} /readyz failures"

    # An identity created after the outage is issued.
    after = f"after-{case}"
    identity(cluster, after, "1h", other)
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{after}", "-n", other, "--timeout=90s")

    # The token that expired meanwhile (30 s lifetime, 5 s margin) is renewed.
    def renewed() -> bool:
        found = get_json(cluster, "fid", short, "-n", other)
        ready = condition(found) or {}
        return found["status"].get("expiresAt") != before and ready.get("status") == "True"
    wait_for("the short-lived token renewed", renewed, timeout=90)

    # Every identity of the load is issued.
    def load_issued() -> bool:
        listed = get_json(cluster, "fid", "-A")["items"]
        mine = [i for i in listed if i["metadata"]["name"].startswith(f"load-{case}-")]
        return len(mine) == LOAD and all((condition(i) or {}).get("status") == "True" for i in mine)
    wait_for(f"all {LOAD} identities of the load issued", load_issued, timeout=180, interval=1)

    # The tokens that stayed valid were not rewritten.
    after_versions = {name: get_json(cluster, "secret", f"{name}-token", "-n", TEAM)["metadata"]["resourceVersion"]
                      for name in STEADY}
    assert after_versions == versions
