"""One replica without leader election (`fedid run --leader-election=false`).

The chart's single-replica configuration (`replicaCount: 1`, `leaderElection.enabled: false`)
runs fedid without a Lease: the one process must reconcile on its own from the start, and
never create the Lease (the chart then grants no Lease rights at all). The operator runs out of
cluster as that configuration's ServiceAccount, so the test also proves its RBAC is sufficient.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO_ROOT, Cluster, wait_for
from fedid_harness import (
    Operator,
    condition,
    fedid_binary,
    get_json,
    install_chart_service_account,
    secret_data,
    verify_token,
    wait_for_reason,
)

# Names unique to this run, so a reused cluster (FEDID_E2E_CLUSTER) starts clean.
RUN = uuid.uuid4().hex[:6]
OPERATOR_NS = f"fedid-single-{RUN}"
RELEASE = f"fedid-single-{RUN}"
TEAM = f"single-team-{RUN}"
ISSUER = f"single-{RUN}"
# The default of --leader-election-lease-name, which this test leaves unset.
LEASE = "fedid-leader"
AUDIENCE = "sts.example.com"


def running(operator: Operator) -> bool:
    """Raises (with the log's tail) when the operator process has exited."""
    assert operator.process is not None and operator.process.poll() is None, (
        f"fedid exited with {operator.process.returncode if operator.process else None}:\n"
        f"{operator.log_path.read_text(errors='replace')[-4000:]}"
    )
    return True


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    for crd in ("identityissuers.fedid.dev", "federatedidentities.fedid.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    for namespace in (OPERATOR_NS, TEAM):
        cluster.kubectl("create", "namespace", namespace)
    workdir = Path(tempfile.mkdtemp(prefix="fedid-e2e-single-"))
    service_account = install_chart_service_account(
        cluster, OPERATOR_NS, workdir, release=RELEASE, values=("replicaCount=1", "leaderElection.enabled=false")
    )
    single = Operator(
        cluster=cluster,
        binary=fedid_binary(),
        workdir=workdir,
        namespace=OPERATOR_NS,
        name="single",
        kubeconfig=service_account,
        extra_args=["--leader-election=false"],
    )
    single.start()
    try:
        yield single
    finally:
        single.stop()
        cluster.kubectl("delete", "identityissuer", ISSUER, "--wait=false", check=False)
        subprocess.run(
            [str(cluster.bin / "helm"), "uninstall", RELEASE, "-n", OPERATOR_NS],
            capture_output=True, text=True, env=cluster.env(), timeout=120, check=False,
        )
        cluster.kubectl("delete", "namespace", TEAM, OPERATOR_NS, "--wait=false", check=False)


def test_without_leader_election_the_single_replica_reconciles_and_takes_no_lease(
    cluster: Cluster, operator: Operator
) -> None:
    issuer_url = operator.issuer_url(ISSUER)
    issuer = {
        "apiVersion": "fedid.dev/v1alpha1",
        "kind": "IdentityIssuer",
        "metadata": {"name": ISSUER},
        "spec": {
            "issuerURL": issuer_url,
            "signing": {"prepublishPeriod": "2s"},
            "allowedNamespaces": {"names": [TEAM]},
        },
    }
    wait_for("the CRDs to be served", lambda: cluster.apply(json.dumps(issuer)).returncode == 0)

    def issuer_ready() -> bool:
        running(operator)
        ready = condition(get_json(cluster, "identityissuer", ISSUER))
        return bool(ready and ready.get("status") == "True")

    # The broken behaviour this guards against: only the HTTP server runs, nothing reconciles.
    wait_for(f"identityissuer/{ISSUER} to become Ready without leader election", issuer_ready, timeout=45)

    name = "solo"
    cluster.apply(
        json.dumps(
            {
                "apiVersion": "fedid.dev/v1alpha1",
                "kind": "FederatedIdentity",
                "metadata": {"name": name, "namespace": TEAM},
                "spec": {"issuerRef": ISSUER, "audiences": [AUDIENCE]},
            }
        )
    )
    identity = wait_for_reason(cluster, TEAM, name, "Issued", timeout=60)
    assert condition(identity)["status"] == "True"
    assert identity["status"]["secretName"] == f"{name}-token"
    secret = secret_data(cluster, TEAM, f"{name}-token")
    token = secret["decoded"]["token"]
    assert token, "the identity's Secret holds no token"
    claims = verify_token(operator, token, issuer_url, AUDIENCE)
    assert claims["namespace"] == TEAM and claims["identity"] == name

    # No election took place: the default Lease was never created in the operator namespace.
    lease = cluster.kubectl("get", "lease", LEASE, "-n", OPERATOR_NS, check=False)
    assert lease.returncode != 0 and "NotFound" in lease.stderr, f"Lease {LEASE} exists:\n{lease.stdout}"
    running(operator)
