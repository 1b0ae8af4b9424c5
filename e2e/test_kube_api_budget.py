"""The client-side Kubernetes API budget (`fedid run --kube-api-qps Q --kube-api-burst B`).

fedid runs as the chart's ServiceAccount with a budget of 3 requests per second and bursts of 3.
Issuing N identities needs at least 2 API writes each (the Secret's apply and the status patch),
so all of them cannot be Ready sooner than (2N - B) / Q seconds after they are created: a lower
bound a slow machine only makes easier to meet, so a pass means the budget held fedid back.
Everything still becomes Ready (the budget delays requests, it never drops them), and the delay
is reported in `fedid_kube_api_throttled_requests_total` and `..._seconds_total`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Iterator

import pytest

from conftest import Cluster, wait_for
from fedid_harness import Operator, chart_operator, condition, create_issuer, get_json, identity_manifest

RUN = uuid.uuid4().hex[:6]
TEAM = f"api-budget-{RUN}"
ISSUER = f"api-budget-{RUN}"
QPS, BURST = 3, 3
IDENTITIES = 12
WRITES_EACH = 2


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    budget = ["--kube-api-qps", str(QPS), "--kube-api-burst", str(BURST)]
    with chart_operator(cluster, "fedid-api-budget", [TEAM], budget) as running:
        create_issuer(cluster, running, ISSUER, [TEAM])
        yield running
    cluster.kubectl("delete", "identityissuer", ISSUER, "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", TEAM, "--wait=false", check=False)


def test_identities_are_issued_no_faster_than_the_budget_allows(cluster: Cluster, operator: Operator) -> None:
    throttled_before = operator.metric("fedid_kube_api_throttled_requests_total")
    # Let the bucket refill after the issuer's own requests: the bound below assumes a full burst.
    time.sleep(BURST / QPS + 0.5)
    manifests = [identity_manifest(TEAM, f"budget-{n}", ISSUER, lifetime="1h") for n in range(IDENTITIES)]
    created = time.monotonic()
    cluster.apply(json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))

    def all_ready() -> bool:
        items = get_json(cluster, "fid", "-n", TEAM)["items"]
        return len(items) == IDENTITIES and all(
            (condition(item) or {}).get("status") == "True" for item in items)

    wait_for("every identity to be Ready under the budget", all_ready, timeout=180)
    elapsed = time.monotonic() - created
    floor = (WRITES_EACH * IDENTITIES - BURST) / QPS
    assert elapsed >= floor, f"{IDENTITIES} identities Ready after {elapsed:.1f} s, under the budget's floor {floor} s"
    for n in range(IDENTITIES):
        secret = get_json(cluster, "secret", f"budget-{n}-token", "-n", TEAM)
        assert {"token", "expires-at"} <= set(secret["data"]), sorted(secret["data"])

    # The leader Lease has a client of its own outside the budget: with a queue of throttled
    # writes longer than the renew deadline, it kept leading (a lost Lease stops the process).
    assert operator.process is not None and operator.process.poll() is None, operator.logs()[-2000:]
    assert "lost the leader Lease" not in operator.logs()

    # The waits are reported.
    assert operator.metric("fedid_kube_api_throttled_requests_total") - throttled_before >= WRITES_EACH * IDENTITIES - BURST
    assert operator.metric("fedid_kube_api_throttled_seconds_total") > 0
