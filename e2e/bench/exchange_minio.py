#!/usr/bin/env python3
"""Benchmark: token exchange at a real MinIO, fedid beside its anchor, in one run.

1. First-issue rate: N FederatedIdentities, created while their issuer does not yet allow the
   endpoint and then released at once by allowing it, exchanging at MinIO (AssumeRoleWithWebIdentity), against
   a plain client sending the same requests with pre-minted tokens at the same concurrency. Both go
   through the same recording proxy in front of MinIO, which timestamps every request; a rate is
   requests divided by the time between the first and the last one seen there.
2. Request budget: M more identities with `--exchange-qps Q --exchange-burst B`; the proxy's
   timestamps give the most requests in any one-second window, and every identity must be issued.

Each phase also records the CPU time every process spent on it (control plane, MinIO, fedid, this
process with the proxy and the client), per request, and how many cores were busy: on a saturated
machine rates go as 1 / CPU per request, so `cpu_bound_ratio` is the ratio the machine allows once
the apiserver's writes are paid for.

Prints the figures and writes them as JSON (--out). Absolute numbers on a shared 2-core machine are
noise; the ratio is the result. Not a test: nothing here fails on a slow machine.

    e2e/.venv/bin/python e2e/bench/exchange_minio.py --identities 1000 --out /tmp/exchange-bench.json
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import requests

E2E = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(E2E))

from conftest import CLUSTER_DIR, Cluster, _build_tools  # noqa: E402
from bench.cpu import CpuMeter  # noqa: E402
from fedid_harness import Operator, fedid_binary, free_port, write_serving_certificate  # noqa: E402
from peers.recorder import Recorder, forward  # noqa: E402

CLIENT_ID = "minio-bench"


def kubectl_json(cluster: Cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def wait_until(what: str, check, timeout: float) -> None:
    """Polls `check` (which may raise while the thing is not up yet) once a second."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (requests.RequestException, subprocess.SubprocessError, AssertionError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(1)


def ready_count(cluster: Cluster, namespace: str) -> int:
    items = kubectl_json(cluster, "get", "fid", "-n", namespace)["items"]
    return sum(1 for item in items for c in (item.get("status") or {}).get("conditions") or []
               if c["type"] == "Ready" and c["status"] == "True")


def apply_identities(cluster: Cluster, namespace: str, count: int, issuer: str, exchange: dict) -> None:
    documents = [json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": f"bench-{n}", "namespace": namespace},
        "spec": {"issuerRef": issuer, "audiences": [CLIENT_ID], "lifetime": "30m", "exchange": exchange},
    }) for n in range(count)]
    for start in range(0, count, 200):
        cluster.apply("\n---\n".join(documents[start:start + 200]))


def reason_count(cluster: Cluster, namespace: str, reason: str) -> int:
    items = kubectl_json(cluster, "get", "fid", "-n", namespace)["items"]
    return sum(1 for item in items for c in (item.get("status") or {}).get("conditions") or []
               if c["type"] == "Ready" and c["reason"] == reason)


def rate(times: list[float]) -> float:
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("inf")


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    best, low = 0, 0
    for high, at in enumerate(times):
        while times[low] <= at - 1.0:
            low += 1
        best = max(best, high - low + 1)
    return best


def cpu_per_request_ms(spent: dict[str, float], requests: int) -> dict[str, float]:
    """`spent` CPU seconds per request, in milliseconds, with their total."""
    per = {name: round(1000 * seconds / max(requests, 1), 2) for name, seconds in spent.items()}
    per["total"] = round(sum(per.values()), 2)
    return per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16,
                        help="requests in flight at MinIO: the anchor's threads and fedid's --exchange-concurrency")
    parser.add_argument("--reconcile-concurrency", type=int, default=64,
                        help="fedid's --concurrency (identities reconciled at once)")
    parser.add_argument("--budget-identities", type=int, default=200)
    parser.add_argument("--budget-qps", type=float, default=10)
    parser.add_argument("--budget-burst", type=int, default=1)
    parser.add_argument("--cluster", help="reuse a cluster started with e2e/cluster/up DIR")
    parser.add_argument("--out", type=Path, default=Path("exchange-bench.json"))
    args = parser.parse_args()

    bins = _build_tools()
    peers = Path(subprocess.run([str(E2E / "peers" / "build"), "minio"], check=True, capture_output=True,
                                text=True).stdout.strip().splitlines()[-1])
    work = Path(tempfile.mkdtemp(prefix="fedid-bench-"))
    own_cluster = args.cluster is None
    state = Path(args.cluster) if args.cluster else work / "cluster"
    if own_cluster:
        subprocess.run([str(CLUSTER_DIR / "up"), str(state)], check=True, capture_output=True)
    cluster = Cluster(dir=state, bin=bins)
    processes: list[subprocess.Popen] = []
    operators: list[Operator] = []
    results: dict = {"identities": args.identities, "concurrency": args.concurrency,
                     "reconcile_concurrency": args.reconcile_concurrency}
    try:
        repo = E2E.parent
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(repo / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/federatedidentities.fedid.dev", "--timeout=60s")
        run = hashlib.sha1(str(time.time()).encode()).hexdigest()[:6]
        namespace, issuer = f"bench-{run}", f"bench-{run}"
        for ns in ("fedid-system", namespace, f"{namespace}-budget"):
            cluster.kubectl("create", "namespace", ns, check=False)

        def start_operator(name: str, extra: list[str]) -> Operator:
            workdir = work / name
            workdir.mkdir()
            operator = Operator(cluster=cluster, binary=fedid_binary(), workdir=workdir, name=name,
                                extra_args=["--concurrency", str(args.reconcile_concurrency),
                                            "--exchange-concurrency", str(args.concurrency),
                                            "--leader-election", "false", *extra])
            if operators:
                # Serve with the first operator's certificate: MinIO trusts that CA.
                operator.ca, operator.cert, operator.key = operators[0].ca, operators[0].cert, operators[0].key
            operator.start()
            operators.append(operator)
            return operator

        operator = start_operator("fedid-fast", ["--exchange-qps", "100000", "--exchange-burst", "100000"])
        issuer_url = operator.issuer_url(issuer)

        # MinIO behind the recording proxy (both with throwaway CAs).
        minio_port, console_port = free_port(), free_port()
        certs = work / "minio-certs"
        (certs / "CAs").mkdir(parents=True)
        minio_tls = work / "minio-tls"
        minio_tls.mkdir()
        minio_ca, minio_cert, minio_key = write_serving_certificate(minio_tls)
        shutil.copy(minio_cert, certs / "public.crt")
        shutil.copy(minio_key, certs / "private.key")
        shutil.copy(operator.ca, certs / "CAs" / "fedid.crt")
        proxy_dir = work / "proxy"
        proxy_dir.mkdir()
        proxy_ca, proxy_cert, proxy_key = write_serving_certificate(proxy_dir)

        cluster.apply(json.dumps({
            "apiVersion": "fedid.dev/v1alpha1", "kind": "IdentityIssuer", "metadata": {"name": issuer},
            "spec": {"issuerURL": issuer_url, "signing": {"prepublishPeriod": "0s"},
                     "allowedNamespaces": {"names": [namespace, f"{namespace}-budget"]},
                     "exchange": {"allowedEndpoints": ["https://127.0.0.1:1/"]}},
        }))
        cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{issuer}", "--timeout=60s")
        env = {**os.environ, "MINIO_ROOT_USER": "bench-admin", "MINIO_ROOT_PASSWORD": "bench-admin-password",
               "MINIO_IDENTITY_OPENID_CONFIG_URL": f"{issuer_url}/.well-known/openid-configuration",
               "MINIO_IDENTITY_OPENID_CLIENT_ID": CLIENT_ID, "MINIO_IDENTITY_OPENID_ROLE_POLICY": "readwrite",
               "MINIO_BROWSER": "off"}
        minio = subprocess.Popen([str(peers / "minio"), "server", str(work / "minio-data"), "--address",
                                  f"127.0.0.1:{minio_port}", "--console-address", f"127.0.0.1:{console_port}",
                                  "--certs-dir", str(certs)], env=env, stdout=open(work / "minio.log", "wb"),
                                 stderr=subprocess.STDOUT)
        processes.append(minio)
        upstream = f"https://127.0.0.1:{minio_port}"
        wait_until("MinIO", lambda: requests.get(f"{upstream}/minio/health/live", verify=str(minio_ca),
                                                 timeout=5).ok if minio.poll() is None else sys.exit("MinIO exited"),
                   90)
        # Live is not ready for STS: wait for its OpenID configuration to load (it logs the role).
        wait_until("MinIO's OpenID roles", lambda: "IAM Roles" in (work / "minio.log").read_text(errors="replace"),
                   90)
        role = "arn:minio:iam:::role/" + base64.urlsafe_b64encode(
            hashlib.sha1(CLIENT_ID.encode()).digest()).decode().rstrip("=")

        with Recorder(proxy_cert, proxy_key, handler=forward, upstream=upstream, upstream_ca=minio_ca) as proxy:
            exchange = {"caBundle": proxy_ca.read_text(),
                        "aws": {"roleARN": role, "stsEndpoint": f"{proxy.url}/", "durationSeconds": 900}}

            # 1. fedid's first issues, from a standing start: the identities exist (refused, since
            # the issuer does not allow the proxy yet), then one issuer change releases them all.
            apply_identities(cluster, namespace, args.identities, issuer, exchange)
            wait_until("every identity to be refused", lambda: reason_count(
                cluster, namespace, "EndpointNotAllowed") >= args.identities, 600)
            assert not proxy.requests
            control_plane = {path.name: int(path.read_text().strip()) for path in (state / "pids").iterdir()}
            meter = CpuMeter({**control_plane, "minio": minio.pid, "fedid": operator.process.pid}, "bench (proxy, client)", digits=2)
            meter.start()
            started = time.time()
            cluster.kubectl("patch", "identityissuer", issuer, "--type=merge", "-p",
                            json.dumps({"spec": {"exchange": {"allowedEndpoints": [f"{proxy.url}/"]}}}))
            # The proxy's count first: polling `kubectl get fid` over every identity each second would
            # cost the apiserver (and kubectl) CPU in fedid's phase only.
            wait_until("every identity exchanged", lambda: len(proxy.requests) >= args.identities, 1800)
            wait_until("every identity Ready", lambda: ready_count(cluster, namespace) >= args.identities, 1800)
            done = time.time()
            fedid_cpu = meter.stop()
            fedid_times = [r.at for r in proxy.requests]
            results["fedid"] = {
                "requests_at_peer": len(fedid_times), "rate_at_peer_per_s": round(rate(fedid_times), 1),
                "all_ready_after_seconds": round(done - started, 1),
                "cpu_ms_per_identity": cpu_per_request_ms(fedid_cpu, len(fedid_times)),
                "cores_busy": round(sum(fedid_cpu.values()) / max(done - started, 1e-9), 2),
            }

            # 2. The anchor: the same requests with pre-minted tokens (fedid's), same concurrency.
            tokens = []
            for item in kubectl_json(cluster, "get", "secrets", "-n", namespace, "-l", "fedid.dev/identity")["items"]:
                tokens.append(base64.b64decode(item["data"]["token"]).decode())
            before = len(proxy.requests)
            session = requests.Session()

            def assume(jwt: str) -> int:
                body = urllib.parse.urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
                                               "RoleArn": role, "RoleSessionName": "anchor",
                                               "WebIdentityToken": jwt, "DurationSeconds": "900"})
                return session.post(f"{proxy.url}/", data=body, verify=str(proxy_ca), timeout=30,
                                    headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code

            meter.start()
            anchor_started = time.time()
            with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                statuses = list(pool.map(assume, tokens))
            anchor_seconds = time.time() - anchor_started
            anchor_cpu = meter.stop()
            anchor_times = [r.at for r in proxy.requests[before:]]
            results["anchor"] = {"requests_at_peer": len(anchor_times), "ok": statuses.count(200),
                                 "rate_at_peer_per_s": round(rate(anchor_times), 1),
                                 "cpu_ms_per_request": cpu_per_request_ms(anchor_cpu, len(anchor_times)),
                                 "cores_busy": round(sum(anchor_cpu.values()) / max(anchor_seconds, 1e-9), 2)}
            results["ratio_fedid_to_anchor"] = round(results["fedid"]["rate_at_peer_per_s"]
                                                     / results["anchor"]["rate_at_peer_per_s"], 2)
            # With every core busy in both phases, rates go as 1 / CPU per request: the ratio
            # this machine allows fedid, given what the apiserver's writes cost beside MinIO's work.
            results["cpu_bound_ratio"] = round(results["anchor"]["cpu_ms_per_request"]["total"]
                                               / results["fedid"]["cpu_ms_per_identity"]["total"], 2)

            # 3. The request budget, measured at the peer.
            operator.stop()
            budget_operator = start_operator("fedid-budget", ["--exchange-qps", str(args.budget_qps),
                                                              "--exchange-burst", str(args.budget_burst)])
            del budget_operator
            before = len(proxy.requests)
            apply_identities(cluster, f"{namespace}-budget", args.budget_identities, issuer, exchange)
            wait_until("every budget identity Ready",
                       lambda: ready_count(cluster, f"{namespace}-budget") >= args.budget_identities, 1800)
            budget_times = [r.at for r in proxy.requests[before:]]
            results["budget"] = {
                "qps": args.budget_qps, "burst": args.budget_burst, "identities": args.budget_identities,
                "requests_at_peer": len(budget_times), "busiest_one_second_window": busiest_second(budget_times),
                "rate_at_peer_per_s": round(rate(budget_times), 2),
                "all_issued": ready_count(cluster, f"{namespace}-budget") >= args.budget_identities,
            }
        print(json.dumps(results, indent=2))
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        for operator in operators:
            operator.stop()
        for process in processes:
            process.terminate()
            process.wait(timeout=20)
        if own_cluster:
            subprocess.run([str(CLUSTER_DIR / "down"), str(state)], check=False, capture_output=True)


if __name__ == "__main__":
    main()
