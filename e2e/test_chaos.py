"""Chaos: two `fedid run` replicas while identities are created, changed and deleted in a churn,
a key rotation is forced, and the leader is SIGKILLed three times at random moments. A verifier
samples every token Secret throughout and checks each token against the JWKS both replicas serve
at that moment.

The invariants: zero tokens failing verification at any instant, every identity Ready with a
valid token after the churn settles, no Secret left without its identity, a foreign Secret
carrying fedid's labels untouched, and one signing key at a time (both replicas serve the same
JWKS and the issuer reports one active key).

CI runs a shortened form (FEDID_CHAOS_IDENTITIES, default 120 identities, about 2 minutes);
`FEDID_CHAOS_IDENTITIES=2000 e2e/test -k chaos` is the full run.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import threading
import time
import uuid
from typing import Iterator

import jwt
import pytest

from conftest import Cluster, wait_for
from fedid_harness import Operator, get_json, replica_set

RUN = uuid.uuid4().hex[:6]
OPERATOR_NS = f"fedid-chaos-{RUN}"
TEAM = f"chaos-{RUN}"
ISSUER = f"chaos-{RUN}"
LEASE_SECONDS = 6
IDENTITIES = int(os.environ.get("FEDID_CHAOS_IDENTITIES", "120"))
KILLS = 3


def kubectl_json(cluster: Cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def lease_holder(cluster: Cluster) -> str | None:
    result = cluster.kubectl("get", "lease", "fedid-leader", "-n", OPERATOR_NS,
                             "-o", "jsonpath={.spec.holderIdentity}", check=False)
    return (result.stdout.strip() or None) if result.returncode == 0 else None


@pytest.fixture(scope="module")
def replicas(cluster: Cluster) -> Iterator[dict[str, Operator]]:
    with replica_set(cluster, OPERATOR_NS, [TEAM], ["chaos-a", "chaos-b"], ISSUER, [TEAM], LEASE_SECONDS,
                     prepublish="3s", extra_args=["--concurrency", "16"]) as operators:
        yield operators


def identity_manifest(name: str, audience: str) -> dict:
    return {"apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
            "metadata": {"name": name, "namespace": TEAM},
            "spec": {"issuerRef": ISSUER, "audiences": [audience]}}


def apply_all(cluster: Cluster, manifests: list[dict]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))


class Verifier(threading.Thread):
    """Lists the token Secrets, then fetches the JWKS of every live replica, and verifies each
    token against each JWKS, until stopped. Every failure is kept."""

    def __init__(self, cluster: Cluster, operators: dict[str, Operator]) -> None:
        super().__init__(daemon=True)
        self.cluster, self.operators = cluster, operators
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.checked = 0
        self.rounds = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.round()
            except Exception as error:  # noqa: BLE001 - a failed read is not a verdict; retried
                print(f"verifier round skipped: {error}")
            self.stop.wait(0.5)

    def round(self) -> None:
        listed = kubectl_json(self.cluster, "get", "secrets", "-n", TEAM, "-l", "fedid.dev/identity")["items"]
        keysets = []
        for operator in list(self.operators.values()):
            if operator.process is None:
                continue
            try:
                response = operator.get(f"/issuers/{ISSUER}/.well-known/jwks.json")
            except Exception:  # noqa: BLE001 - a replica being killed right now
                continue
            if response.status_code == 200:
                keysets.append((operator.name, jwt.PyJWKSet.from_dict(response.json())))
        for secret in listed:
            owners = secret["metadata"].get("ownerReferences") or []
            if not any(owner["kind"] == "FederatedIdentity" for owner in owners):
                continue  # not fedid's (the forged one)
            encoded = (secret.get("data") or {}).get("token")
            if not encoded:
                self.failures.append(f"{secret['metadata']['name']}: no token")
                continue
            token = base64.b64decode(encoded).decode()
            try:
                kid = jwt.get_unverified_header(token)["kid"]
                audience = jwt.decode(token, options={"verify_signature": False})["aud"]
            except (jwt.InvalidTokenError, KeyError) as error:
                self.failures.append(f"{secret['metadata']['name']}: unreadable token: {error}")
                continue
            for name, keyset in keysets:
                try:
                    key = next(k for k in keyset.keys if k.key_id == kid)
                    jwt.decode(token, key=key, algorithms=["RS256", "ES256"], audience=audience,
                               issuer=self.operators["chaos-a"].issuer_url(ISSUER))
                except StopIteration:
                    self.failures.append(f"{secret['metadata']['name']}: kid {kid} not in {name}'s JWKS")
                except jwt.InvalidTokenError as error:
                    self.failures.append(f"{secret['metadata']['name']} against {name}: {error}")
                self.checked += 1
        self.rounds += 1


def test_leader_kills_during_churn_and_rotation_lose_nothing(cluster: Cluster, replicas: dict[str, Operator]) -> None:
    rng = random.Random(RUN)
    # A foreign Secret dressed as one of fedid's: it must never be touched.
    foreign = {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "forged", "namespace": TEAM,
        "labels": {"app.kubernetes.io/managed-by": "fedid", "fedid.dev/identity": "job-0"}},
        "stringData": {"token": "not fedid's"}}
    cluster.apply(json.dumps(foreign))
    forged_version = get_json(cluster, "secret", "forged", "-n", TEAM)["metadata"]["resourceVersion"]

    names = [f"job-{n}" for n in range(IDENTITIES)]
    apply_all(cluster, [identity_manifest(name, "aud-0") for name in names])
    verifier = Verifier(cluster, replicas)
    verifier.start()
    alive = set(names)
    kills_done, started = 0, time.monotonic()
    kill_at = sorted(rng.uniform(5, 40) for _ in range(KILLS))
    rotated = False
    try:
        generation = 0
        while kills_done < KILLS or time.monotonic() - started < 45:
            generation += 1
            # Churn: change a fifth (a new audience reissues), delete a twentieth, recreate them.
            changed = rng.sample(sorted(alive), max(1, len(alive) // 5))
            apply_all(cluster, [identity_manifest(name, f"aud-{generation}") for name in changed])
            doomed = rng.sample(sorted(alive), max(1, len(alive) // 20))
            cluster.kubectl("delete", "fid", *doomed, "-n", TEAM, "--wait=false")
            alive -= set(doomed)
            reborn = rng.sample(doomed, len(doomed) // 2)
            apply_all(cluster, [identity_manifest(name, "aud-0") for name in reborn])
            alive |= set(reborn)
            elapsed = time.monotonic() - started
            if not rotated and elapsed > 15:
                cluster.kubectl("annotate", "--overwrite", "identityissuer", ISSUER,
                                f"fedid.dev/rotate-keys=chaos-{RUN}")
                rotated = True
            if kills_done < KILLS and elapsed >= kill_at[kills_done]:
                leader = wait_for("a leader", lambda: lease_holder(cluster), timeout=30)
                victim = replicas[leader]
                victim.process.send_signal(signal.SIGKILL)
                victim.process.wait(timeout=10)
                victim.process = None
                survivor = next(name for name in replicas if name != leader)
                wait_for(f"{survivor} to take the Lease", lambda: lease_holder(cluster) == survivor or None,
                         timeout=LEASE_SECONDS * 4)
                victim.start()
                kills_done += 1
            time.sleep(1)

        # Settle: every identity Ready with a token, no orphaned Secret.
        for name in sorted(alive):
            cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=120s")

        def settled() -> bool:
            secrets = kubectl_json(cluster, "get", "secrets", "-n", TEAM, "-l", "fedid.dev/identity")["items"]
            owned = {s["metadata"]["name"] for s in secrets if s["metadata"]["name"] != "forged"}
            return owned == {f"{name}-token" for name in alive} or None
        wait_for("exactly the live identities' Secrets", settled, timeout=120)
        # A few more verifier rounds over the settled state.
        rounds = verifier.rounds
        wait_for("verifier rounds after settling", lambda: verifier.rounds >= rounds + 3 or None, timeout=60)
    finally:
        verifier.stop.set()
        verifier.join(timeout=30)

    print(f"\nchaos: {IDENTITIES} identities, {generation} churn rounds, {kills_done} leader kills, "
          f"{verifier.rounds} verifier rounds, {verifier.checked} token checks, {len(verifier.failures)} failures")
    assert kills_done == KILLS and rotated
    assert verifier.rounds > 10 and verifier.checked > IDENTITIES
    assert not verifier.failures, verifier.failures[:20]
    assert get_json(cluster, "secret", "forged", "-n", TEAM)["metadata"]["resourceVersion"] == forged_version
    # One signing key at a time: both replicas serve the same JWKS, and the active key is in it.
    documents = [replica.get(f"/issuers/{ISSUER}/.well-known/jwks.json").json() for replica in replicas.values()]
    assert documents[0] == documents[1]
    active = get_json(cluster, "identityissuer", ISSUER)["status"]["activeKeyID"]
    assert active in {key["kid"] for key in documents[0]["keys"]}
    for name in sorted(alive):
        token = get_json(cluster, "fid", name, "-n", TEAM)["status"]["keyID"]
        assert token in {key["kid"] for key in documents[0]["keys"]}
