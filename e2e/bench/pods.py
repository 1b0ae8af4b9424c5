#!/usr/bin/env python3
"""Benchmark: per-pod tokens at a real apiserver (fedid's webhook, pod controller and token
endpoint), each beside an anchor measured in the same run.

1. Webhook latency at the apiserver: the apiserver's own histogram
   `apiserver_admission_webhook_admission_duration_seconds` (type admit, operation CREATE, this
   run's webhook name), read before and after the pods are created; p50/p99 come from the bucket
   deltas, interpolated within a bucket. The apiserver's buckets are coarse (5 ms, 25 ms, 100 ms,
   ...): the bucket p99 falls in is reported too. Beside it fedid's own
   `fedid_webhook_duration_seconds` (fine buckets; it times the handler from the raw body, parsing
   included, but not TLS or writing the answer), the client-side create latency of the labelled pods
   against unlabelled pods spread among them (--unlabelled; the anchor: no webhook call), and the
   TCP connections to fedid's pod server seen during the creates (does the apiserver reuse them?).
   Before the load, the webhook alone: --probe-pods pods at --probe-rate, read at the apiserver,
   and twice as many AdmissionReviews POSTed by this script straight to fedid's /mutate.
2. Pod create -> Secret present: --pods labelled pods created at --rate pods/s by direct HTTPS
   POSTs to the apiserver (the kubeconfig's client certificate, a thread pool holding the rate),
   bound to a fake Node run by kwok (so they become Running, as real CI pods would). Each pod's
   creation time is taken when its POST answers; each Secret's appearance from a watch on the
   namespace's Secrets (`?watch=1`, labelSelector fedid.dev/identity). p50/p99/max of the
   difference, how many pods got a Secret, how many became Running; how far out of creation order
   the Secrets came (`order`), and a timeline by 5 s window with the cores the machine and the
   processes outside this run were busy (a CI job on the same machine shows there).
3. Pull rate against the anchor: the apiserver's TokenRequest (POST .../serviceaccounts/default/token,
   bound to a pod) against fedid's `POST /v1/token` (a bound service-account token), the same
   client concurrency and number of requests, spread over --pull-pods pods, interleaved in
   --rounds rounds so that the load of whatever else runs on the machine falls on both. fedid
   runs with `--token-request-qps 100000 --token-request-burst 100000`, so its per-pod budget is
   not what is measured. With --selector-phase (default) the same requests also go to an identity
   whose issuer allows namespaces by label selector (the path that reads the namespace's labels).

Every phase records the CPU time of each process (etcd, kube-apiserver, kube-controller-manager,
kwok, fedid, this process: the client and the watches) and the apiserver's request counts by verb
and resource, which say what fedid asked of the apiserver per pod or per request.

Prints a summary table and the raw figures, and writes them as JSON (--out). Absolute numbers on a
shared 2-core machine are noise; the ratios are the result. Not a test: nothing here fails on a
slow machine, the goals (webhook p99 <= 10 ms, Secret p99 <= 1 s at 50 pods/s, pull ratio >= 0.8)
are only reported as met or not.

The fedid binary: target/release/fedid if it is newer than every source file, else
target/debug/fedid copied to /tmp/fedid-bench-bin (so a rebuild during the run does not change
it), or --fedid-bin; the output says which build was used and whether it is older than the
sources.

    e2e/.venv/bin/python e2e/bench/pods.py --quick --out /tmp/pods-bench-quick.json
    e2e/.venv/bin/python e2e/bench/pods.py --pods 2000 --rate 50 --requests 2000 --out /tmp/pods-bench.json
    e2e/.venv/bin/python e2e/bench/pods.py --cluster DIR ...   # reuse a cluster from e2e/cluster/up DIR
"""

from __future__ import annotations

import argparse
import base64
import bisect
import collections
import concurrent.futures
import hashlib
import itertools
import json
import math
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import requests

E2E = Path(__file__).resolve().parent.parent
REPO = E2E.parent
sys.path.insert(0, str(E2E))

from conftest import CLUSTER_DIR, Cluster, _build_tools  # noqa: E402
from bench.cpu import CpuMeter  # noqa: E402
from fedid_harness import Operator, free_port  # noqa: E402

IDENTITY_LABEL = "fedid.dev/identity"
TOKEN_REQUEST_AUDIENCE = "fedid.dev/token-request"
PULL_AUDIENCE = "vault.example.com"
POD_TLS_SECRET = "fedid-pod-server-tls"
RUN_LABEL = "fedid-bench/pods-run"
WEBHOOK_METRIC = "apiserver_admission_webhook_admission_duration_seconds"
FEDID_WEBHOOK_METRIC = "fedid_webhook_duration_seconds"
BIN_COPY = Path("/tmp/fedid-bench-bin")
QUICK = {"pods": 200, "requests": 300, "unlabelled": 50, "probe_pods": 20}

# kwok runs no stage it is not given: trimmed copies of its "fast" node and pod stages
# (kustomize/stage/{node,pod}/fast of kwok v0.8.0), with a node heartbeat every ~10 s.
KWOK_STAGES = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-initialize
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - {key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: NotIn, values: ['True']}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $now | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type | Quote }}
      {{ end }}
      addresses:
      {{ with NodeIP }}
      - address: {{ . | Quote }}
        type: InternalIP
      {{ end }}
      allocatable: {cpu: 1k, memory: 4Ti, pods: 1M}
      capacity: {cpu: 1k, memory: 4Ti, pods: 1M}
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-heartbeat
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - {key: '.status.phase', operator: In, values: [Running]}
    - {key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: In, values: ['True']}
  delay: {durationMilliseconds: 10000, jitterDurationMilliseconds: 2000}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $now | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type | Quote }}
      {{ end }}
  immediateNextStage: true
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}
    - {key: '.status.phase', operator: In, values: [Pending]}
    - {key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: NotIn, values: ['True']}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Ready}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: ContainersReady}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      {{ $hostIPs := NodeIPsWith .spec.nodeName }}
      {{ with $hostIPs }}
      hostIP: {{ index . 0 | Quote }}
      {{ end }}
      {{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
      {{ with $podIPs }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: Exists}
  next:
    delete: true
"""


# --- small helpers -------------------------------------------------------------------------


def wait_until(what: str, check: Callable[[], object], timeout: float, interval: float = 1.0) -> object:
    """Polls `check` (which may raise while the thing is not there yet) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except (requests.RequestException, subprocess.SubprocessError, AssertionError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(interval)


def percentiles(values: list[float], scale: float = 1000.0) -> dict:
    """count, min, p50, p90, p99, max of `values` (seconds), in milliseconds by default."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        # Nearest rank: the value at or below which a fraction q of the samples lie.
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"count": len(ordered), "min": round(ordered[0] * scale, 2), "p50": round(at(0.5) * scale, 2),
            "p90": round(at(0.9) * scale, 2), "p99": round(at(0.99) * scale, 2),
            "max": round(ordered[-1] * scale, 2)}


def add_cpu(total: dict[str, float], spent: dict[str, float]) -> None:
    for name, seconds in spent.items():
        total[name] = total.get(name, 0.0) + seconds


def cpu_per_request_ms(spent: dict[str, float], count: int) -> dict[str, float]:
    per = {name: round(1000 * seconds / max(count, 1), 3) for name, seconds in spent.items()}
    per["total"] = round(sum(per.values()), 3)
    return per


# --- Prometheus text -----------------------------------------------------------------------

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` (exactly) in a Prometheus/OpenMetrics text."""
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, labels = series.partition("{")
        if metric != name:
            continue
        try:
            found.append((dict(_LABEL.findall(labels)), float(value)))
        except ValueError:
            continue
    return found


def histogram(text: str, name: str, want: dict[str, str] | None = None) -> dict:
    """The cumulative buckets (le -> count), sum and count of histogram `name`, summed over the
    series whose labels include `want`."""
    want = want or {}

    def matches(labels: dict[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in want.items())

    buckets: dict[float, float] = collections.defaultdict(float)
    for labels, value in samples(text, f"{name}_bucket"):
        if matches(labels):
            buckets[float(labels["le"])] += value
    total = sum(value for labels, value in samples(text, f"{name}_sum") if matches(labels))
    count = sum(value for labels, value in samples(text, f"{name}_count") if matches(labels))
    return {"buckets": dict(buckets), "sum": total, "count": count}


def histogram_delta(before: dict, after: dict) -> dict:
    return {"buckets": {le: after["buckets"][le] - before["buckets"].get(le, 0.0) for le in after["buckets"]},
            "sum": after["sum"] - before["sum"], "count": after["count"] - before["count"]}


def histogram_quantile(delta: dict, q: float) -> dict:
    """The q-quantile of a histogram delta, interpolated linearly within its bucket, with the
    bucket's bounds (seconds)."""
    bounds = sorted(delta["buckets"])
    total = delta["buckets"].get(math.inf, delta["count"])
    if total <= 0:
        return {"value": None, "bucket": None}
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        cumulative = delta["buckets"][le]
        if cumulative >= rank:
            if math.isinf(le):
                return {"value": None, "bucket": [lower, None], "above": lower}
            inside = cumulative - below
            fraction = (rank - below) / inside if inside > 0 else 1.0
            return {"value": lower + (le - lower) * fraction, "bucket": [lower, le]}
        lower, below = le, cumulative
    return {"value": None, "bucket": None}


def summarize_histogram(delta: dict) -> dict:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    summary: dict = {"count": int(delta["count"]),
                     "mean_ms": ms(delta["sum"] / delta["count"]) if delta["count"] else None,
                     "bucket_bounds_ms": [ms(le) for le in sorted(delta["buckets"]) if not math.isinf(le)],
                     "cumulative_counts": {("+Inf" if math.isinf(le) else str(ms(le))): int(delta["buckets"][le])
                                           for le in sorted(delta["buckets"])}}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        found = histogram_quantile(delta, q)
        summary[f"{name}_ms"] = ms(found["value"])
        summary[f"{name}_bucket_ms"] = None if found["bucket"] is None else [ms(b) for b in found["bucket"]]
    return summary


def request_counts(text: str) -> dict[str, float]:
    """The apiserver's `apiserver_request_total`, summed by "VERB resource[/subresource]"."""
    counts: dict[str, float] = collections.defaultdict(float)
    for labels, value in samples(text, "apiserver_request_total"):
        resource = labels.get("resource", "")
        if not resource:
            continue
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        counts[f"{labels.get('verb', '?')} {resource}"] += value
    return dict(counts)


def counts_delta(before: dict[str, float], after: dict[str, float], per: int | None = None) -> dict:
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    delta = {key: value for key, value in sorted(delta.items(), key=lambda item: -item[1]) if value > 0}
    if per:
        return {key: round(value / per, 3) for key, value in delta.items()}
    return {key: int(value) for key, value in delta.items()}


# --- the apiserver over HTTPS --------------------------------------------------------------


class ApiServer:
    """Direct HTTPS to the apiserver with the kubeconfig's client certificate; one session per
    thread, so that every worker keeps its own connection."""

    def __init__(self, cluster: Cluster) -> None:
        config = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
        self.server = config["clusters"][0]["cluster"]["server"].rstrip("/")
        user = config["users"][0]["user"]
        self.dir = Path(tempfile.mkdtemp(prefix="fedid-bench-client-"))
        self.ca = self.dir / "ca.crt"
        self.ca.write_bytes(base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]))
        self.cert, self.key = self.dir / "client.crt", self.dir / "client.key"
        self.cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
        self.key.write_bytes(base64.b64decode(user["client-key-data"]))
        self._local = threading.local()

    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self.new_session()
            self._local.session = session
        return session

    def new_session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        session.verify = str(self.ca)
        session.cert = (str(self.cert), str(self.key))
        return session

    def post(self, path: str, body: dict, session: requests.Session | None = None) -> requests.Response:
        return (session or self.session()).post(f"{self.server}{path}", json=body, timeout=60)


class Watch(threading.Thread):
    """An HTTP streaming watch (`?watch=1`) calling `on_event(type, object, monotonic time)` for
    every event as it arrives; reconnects from the last resourceVersion."""

    def __init__(self, api: ApiServer, path: str, params: dict[str, str],
                 on_event: Callable[[str, dict, float], None]) -> None:
        super().__init__(daemon=True)
        self.api, self.path, self.params, self.on_event = api, path, params, on_event
        self.connected = threading.Event()
        self.stopped = False
        self.response: requests.Response | None = None
        self.reconnects = 0
        self.session = api.new_session()

    def run(self) -> None:
        version = None
        while not self.stopped:
            params = {**self.params, "watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "1800"}
            if version:
                params["resourceVersion"] = version
            try:
                with self.session.get(f"{self.api.server}{self.path}", params=params, stream=True,
                                      timeout=(10, 1900)) as response:
                    self.response = response
                    response.raise_for_status()
                    self.connected.set()
                    for line in response.iter_lines(chunk_size=None):
                        if not line:
                            continue
                        at = time.monotonic()
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            version = None  # 410 Gone: start again (events repeat as ADDED)
                            break
                        version = event["object"]["metadata"].get("resourceVersion") or version
                        if event["type"] != "BOOKMARK":
                            self.on_event(event["type"], event["object"], at)
            except Exception:  # noqa: BLE001 - a broken or closed stream: reconnect unless stopped
                pass
            if not self.stopped:
                self.reconnects += 1
                time.sleep(0.2)

    def stop(self) -> None:
        self.stopped = True
        if self.response is not None:
            try:
                self.response.close()
            except Exception:  # noqa: BLE001 - closing a stream another thread reads
                pass


# --- fedid, kwok and the objects -----------------------------------------------------------


def newest_source() -> tuple[float, str]:
    newest, name = 0.0, ""
    for root in ("core", "operator"):
        for path in (REPO / root).rglob("*"):
            if path.is_file() and (path.suffix == ".rs" or path.name == "Cargo.toml"):
                if path.stat().st_mtime > newest:
                    newest, name = path.stat().st_mtime, str(path.relative_to(REPO))
    for path in (REPO / "Cargo.toml", REPO / "Cargo.lock"):
        if path.exists() and path.stat().st_mtime > newest:
            newest, name = path.stat().st_mtime, path.name
    return newest, name


def source_state() -> dict:
    """The commit and the files changed since (the binary may hold some of those changes)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.rstrip("\n")

    return {"commit": git("rev-parse", "HEAD"),
            "modified": [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]}


def pick_binary(explicit: str | None) -> tuple[Path, dict]:
    """The fedid binary to run and what it is (see the module's docstring)."""
    newest, newest_name = newest_source()

    def described(path: Path, build: str, source: Path) -> dict:
        stamp = source.stat().st_mtime
        return {"build": build, "path": str(path), "copied_from": str(source),
                "binary_mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)),
                "newest_source": newest_name,
                "newest_source_mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest)),
                "older_than_sources": stamp < newest}

    if explicit:
        path = Path(explicit).resolve()
        return path, described(path, "given (--fedid-bin)", path)
    release, debug = REPO / "target" / "release" / "fedid", REPO / "target" / "debug" / "fedid"
    if release.exists() and release.stat().st_mtime >= newest:
        source, build = release, "release"
    elif debug.exists():
        source, build = debug, "debug"
    elif release.exists():
        source, build = release, "release (older than the sources)"
    else:
        raise SystemExit("no fedid binary: build one (cargo build) or pass --fedid-bin")
    if not (BIN_COPY.exists() and BIN_COPY.stat().st_size == source.stat().st_size
            and BIN_COPY.stat().st_mtime == source.stat().st_mtime):
        shutil.copy2(source, BIN_COPY)
    return BIN_COPY, described(BIN_COPY, build, source)


def admission_review(namespace: str, pod: dict) -> dict:
    """An AdmissionReview of a pod CREATE, as the apiserver sends it (without its defaults)."""
    group_version_kind = {"group": "", "version": "v1", "kind": "Pod"}
    resource = {"group": "", "version": "v1", "resource": "pods"}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uuid.uuid4().hex, "kind": group_version_kind, "resource": resource,
                        "requestKind": group_version_kind, "requestResource": resource,
                        "name": pod["metadata"]["name"], "namespace": namespace, "operation": "CREATE",
                        "userInfo": {"username": "fedid-bench"},
                        "object": {**pod, "metadata": {**pod["metadata"], "namespace": namespace}},
                        "oldObject": None, "dryRun": False,
                        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}}


def webhook_manifest(configuration: str, webhook: str, port: int, run: str) -> str:
    return json.dumps({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": configuration},
        "webhooks": [{
            "name": webhook,
            "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate"},
            "objectSelector": {"matchExpressions": [{"key": IDENTITY_LABEL, "operator": "Exists"}]},
            "namespaceSelector": {"matchLabels": {RUN_LABEL: run}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "reinvocationPolicy": "IfNeeded", "timeoutSeconds": 10,
        }],
    })


def issuer_manifest(name: str, url: str, allowed: dict) -> str:
    return json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "IdentityIssuer", "metadata": {"name": name},
        "spec": {"issuerURL": url, "signing": {"prepublishPeriod": "0s"}, "allowedNamespaces": allowed,
                 "tokenLifetime": {"default": "1h", "maximum": "2h"}},
    })


def identity_manifest(namespace: str, name: str, issuer: str) -> str:
    return json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"issuerRef": issuer, "audiences": ["sts.example.com"], "lifetime": "1h",
                 "pods": {"allowedAudiences": [PULL_AUDIENCE]}},
    })


def pod_body(name: str, node: str, identity: str | None) -> dict:
    labels = {"app": "fedid-bench", **({IDENTITY_LABEL: identity} if identity else {})}
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node, "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox"}],
            # As kwok's examples: its nodes may carry its taint, and nodes it does not heartbeat
            # in time get the node controller's.
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"},
                            {"key": "node.kubernetes.io/not-ready", "operator": "Exists"},
                            {"key": "node.kubernetes.io/unreachable", "operator": "Exists"}],
        },
    }


def node_manifest(name: str) -> str:
    resources = {"cpu": "1000", "memory": "4Ti", "pods": "100000"}
    return json.dumps({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                     "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "spec": {},
        "status": {"allocatable": resources, "capacity": resources},
    })


def new_namespace(cluster: Cluster, name: str, labels: dict[str, str]) -> None:
    cluster.apply(json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}))
    wait_until(f"the default ServiceAccount of {name}",
               lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0, 60)


def wait_for_reason(cluster: Cluster, namespace: str, name: str, reason: str, timeout: float = 120) -> None:
    def check() -> bool:
        identity = json.loads(cluster.kubectl("get", "fid", name, "-n", namespace, "-o", "json").stdout)
        return any(c.get("type") == "Ready" and c.get("reason") == reason
                   for c in (identity.get("status") or {}).get("conditions") or [])

    wait_until(f"fid/{name} in {namespace} to report {reason}", check, timeout)


def apiserver_metrics(cluster: Cluster) -> str:
    return cluster.kubectl("get", "--raw", "/metrics").stdout


# --- phases --------------------------------------------------------------------------------


def create_pods_paced(api: ApiServer, namespace: str, bodies: list[dict], rate: float,
                      workers: int) -> list[dict]:
    """POSTs `bodies` at `rate` per second from a thread pool; per pod: when its POST was sent
    and answered (monotonic), its status, uid and, once admitted, its Secret's name."""
    results: list[dict] = [{} for _ in bodies]
    begin = time.monotonic() + 0.2

    def one(index: int) -> None:
        delay = begin + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent = time.monotonic()
        try:
            response = api.post(f"/api/v1/namespaces/{namespace}/pods", bodies[index])
            answered = time.monotonic()
            entry = {"name": bodies[index]["metadata"]["name"], "sent": sent, "answered": answered,
                     "status": response.status_code, "lag": sent - (begin + index / rate)}
            if response.status_code == 201:
                pod = response.json()
                entry["uid"] = pod["metadata"]["uid"]
                entry["secret"] = (pod["metadata"].get("annotations") or {}).get("fedid.dev/secret-name")
            else:
                entry["error"] = response.text[:300]
        except requests.RequestException as error:
            entry = {"name": bodies[index]["metadata"]["name"], "sent": sent, "answered": time.monotonic(),
                     "status": 0, "error": str(error)[:300], "lag": sent - (begin + index / rate)}
        results[index] = entry

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(len(bodies))))
    return results


class ConnectionCounter(threading.Thread):
    """Samples the loopback TCP connections to `port` (fedid's pod server) from /proc/net/tcp:
    how many are established at once, and how many distinct ones (client ports) were seen. Many
    distinct connections for few pods mean the apiserver opens a connection per call."""

    def __init__(self, port: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = f"{port:04X}", interval
        self.seen: set[str] = set()
        self.most = 0
        self.samples = 0
        self.stopped = threading.Event()

    def _established(self) -> set[str]:
        found = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if state == "01" and local.rsplit(":", 1)[1] == self.port:
                    found.add(remote)
        return found

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            current = self._established()
            self.seen |= current
            self.most = max(self.most, len(current))
            self.samples += 1

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)

    def figures(self) -> dict:
        return {"distinct_seen": len(self.seen), "most_at_once": self.most, "samples": self.samples,
                "sample_interval_s": self.interval}


class LoadSampler(threading.Thread):
    """Once a second: the cores the whole machine was busy (/proc/stat) and the cores this run's
    processes used (the meter's), so that load from outside the run (a CI job) shows."""

    def __init__(self, meter: CpuMeter, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.meter, self.interval = meter, interval
        self.samples: list[dict] = []
        self.stopped = threading.Event()

    @staticmethod
    def _busy() -> float:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        began = time.monotonic()
        busy, ours = self._busy(), sum(self.meter._now().values())
        last = began
        while not self.stopped.wait(self.interval):
            now = time.monotonic()
            busy_now, ours_now = self._busy(), sum(self.meter._now().values())
            elapsed = max(now - last, 1e-9)
            machine, run = (busy_now - busy) / elapsed, (ours_now - ours) / elapsed
            self.samples.append({"t": round(now - began, 1), "machine_cores": round(machine, 2),
                                 "run_cores": round(run, 2), "other_cores": round(max(machine - run, 0.0), 2)})
            busy, ours, last = busy_now, ours_now, now

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def overtaken(admitted: list[dict], secret_seen: dict[str, float]) -> dict:
    """How far out of creation order the Secrets came: per pod, how many pods created after it
    had their Secret first. FIFO service gives small numbers; a queue served in arbitrary order
    under a backlog gives large ones for the pods it left waiting."""
    pods = sorted((entry["sent"], secret_seen[entry["uid"]]) for entry in admitted if entry["uid"] in secret_seen)
    later: list[float] = []
    counts = []
    for _, secret_at in reversed(pods):
        counts.append(bisect.bisect_left(later, secret_at))
        bisect.insort(later, secret_at)
    counts.sort()
    return {"overtaken_by_later_pods_p50": counts[len(counts) // 2] if counts else None,
            "overtaken_by_later_pods_p99": counts[min(len(counts) - 1, math.ceil(0.99 * len(counts)) - 1)]
            if counts else None,
            "overtaken_by_later_pods_max": counts[-1] if counts else None,
            "pods_overtaken_by_100_or_more": sum(1 for count in counts if count >= 100)}


def timeline(created: list[dict], secret_seen: dict[str, float], load: list[dict], began: float,
             window: float = 5.0) -> list[dict]:
    """Per `window` seconds of the creates: pods sent, their create latency and create -> Secret
    (p50, max, ms), and the cores used by the machine and by processes outside this run."""
    rows = []
    end = max((entry["sent"] for entry in created), default=began) - began
    start = 0.0
    while start <= end:
        inside = [e for e in created if start <= e["sent"] - began < start + window and e["status"] == 201]
        labelled = [e for e in inside if e["name"].startswith("job-")]
        secret = sorted(secret_seen[e["uid"]] - e["answered"] for e in labelled if e["uid"] in secret_seen)
        create = sorted(e["answered"] - e["sent"] for e in inside)
        cpu = [sample for sample in load if start <= sample["t"] < start + window]
        rows.append({
            "from_s": start, "pods": len(inside),
            "create_ms_p50": round(1000 * create[len(create) // 2], 1) if create else None,
            "create_ms_max": round(1000 * create[-1], 1) if create else None,
            "secret_ms_p50": round(1000 * secret[len(secret) // 2], 1) if secret else None,
            "secret_ms_max": round(1000 * secret[-1], 1) if secret else None,
            "machine_cores": round(sum(s["machine_cores"] for s in cpu) / len(cpu), 2) if cpu else None,
            "other_cores": round(sum(s["other_cores"] for s in cpu) / len(cpu), 2) if cpu else None,
        })
        start += window
    return rows


class SessionPool:
    """`size` sessions handed to one worker each, kept between rounds (their connections too)."""

    def __init__(self, make: Callable[[], requests.Session], size: int) -> None:
        self.free: queue.Queue[requests.Session] = queue.Queue()
        for _ in range(size):
            self.free.put(make())


def pull(pool: SessionPool, count: int, concurrency: int,
         one: Callable[[requests.Session, int], int]) -> dict:
    """`count` requests from `concurrency` workers as fast as they are answered."""
    counter = itertools.count()
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        session = pool.free.get()
        try:
            while (index := next(counter)) < count:
                started = time.monotonic()
                try:
                    status = one(session, index)
                except requests.RequestException as error:
                    status = 0
                    with lock:
                        if len(errors) < 5:
                            errors.append(str(error)[:200])
                elapsed = time.monotonic() - started
                with lock:
                    latencies.append(elapsed)
                    statuses[status] += 1
        finally:
            pool.free.put(session)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"seconds": time.monotonic() - started, "latencies": latencies, "statuses": statuses, "errors": errors}


# --- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes: --pods {QUICK['pods']}, --requests {QUICK['requests']}, "
                             f"--unlabelled {QUICK['unlabelled']} (unless given)")
    parser.add_argument("--pods", type=int, help="labelled pods to create (default 2000)")
    parser.add_argument("--rate", type=float, default=50.0, help="pods created per second")
    parser.add_argument("--unlabelled", type=int,
                        help="unlabelled pods spread among the labelled ones (the create latency without the "
                             "webhook; default 200)")
    parser.add_argument("--probe-pods", type=int,
                        help="pods created at --probe-rate before the load, for the webhook's latency alone "
                             "(twice as many direct /mutate calls; default 50)")
    parser.add_argument("--probe-rate", type=float, default=5.0)
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="how long each process's idle CPU is measured, before the pods")
    parser.add_argument("--create-workers", type=int, default=32, help="threads holding --rate")
    parser.add_argument("--requests", type=int, help="token requests per side in phase 3 (default 2000)")
    parser.add_argument("--concurrency", type=int, default=8, help="client concurrency of phase 3, both sides")
    parser.add_argument("--pull-pods", type=int, default=16, help="pods the phase-3 requests are spread over")
    parser.add_argument("--rounds", type=int, default=2, help="phase 3 alternates anchor and fedid this many times")
    parser.add_argument("--selector-phase", action=argparse.BooleanOptionalAction, default=True,
                        help="also pull from an identity whose issuer selects namespaces by label")
    parser.add_argument("--reconcile-concurrency", type=int, default=16, help="fedid's --concurrency")
    parser.add_argument("--settle-timeout", type=float, default=300,
                        help="most seconds to wait for the last Secret after the last create")
    parser.add_argument("--fedid-bin", help="the fedid binary (default: see the module's docstring)")
    parser.add_argument("--cluster", help="reuse a cluster started with e2e/cluster/up DIR")
    parser.add_argument("--out", type=Path, default=Path("pods-bench.json"))
    args = parser.parse_args()
    sizes = QUICK if args.quick else {"pods": 2000, "requests": 2000, "unlabelled": 200, "probe_pods": 50}
    args.probe_pods = args.probe_pods if args.probe_pods is not None else sizes["probe_pods"]
    args.pods = args.pods if args.pods is not None else sizes["pods"]
    args.requests = args.requests if args.requests is not None else sizes["requests"]
    args.unlabelled = args.unlabelled if args.unlabelled is not None else sizes["unlabelled"]
    args.pull_pods = max(1, min(args.pull_pods, args.pods))

    binary, build = pick_binary(args.fedid_bin)
    print(f"fedid: {build['build']} build, {build['copied_from']} ({build['binary_mtime']}"
          f"{', older than ' + build['newest_source'] if build['older_than_sources'] else ''})", flush=True)
    bins = _build_tools()
    work = Path(tempfile.mkdtemp(prefix="fedid-bench-pods-"))
    own_cluster = args.cluster is None
    state = Path(args.cluster).resolve() if args.cluster else work / "cluster"
    if own_cluster:
        started = time.monotonic()
        subprocess.run([str(CLUSTER_DIR / "up"), str(state)], check=True, capture_output=True)
        print(f"cluster up in {time.monotonic() - started:.0f}s", flush=True)
    cluster = Cluster(dir=state, bin=bins)
    api = ApiServer(cluster)
    run = hashlib.sha1(str(time.time()).encode()).hexdigest()[:6]
    namespace, selector_namespace = f"bench-pods-{run}", f"bench-pods-sel-{run}"
    operator_namespace = f"fedid-bench-{run}"
    issuer, selector_issuer = f"bench-pods-{run}", f"bench-pods-sel-{run}"
    configuration, webhook = f"fedid-bench-pods-{run}", f"pods-{run}.bench.fedid.dev"
    node = f"kwok-bench-{run}"
    identity = "bench"
    results: dict = {
        "fedid_binary": build,
        "parameters": {"pods": args.pods, "rate_per_s": args.rate, "unlabelled_pods": args.unlabelled,
                       "requests_per_side": args.requests, "concurrency": args.concurrency,
                       "pull_pods": args.pull_pods, "rounds": args.rounds, "quick": args.quick,
                       "reconcile_concurrency": args.reconcile_concurrency, "cores": os.cpu_count()},
        "source": source_state(),
        "load_average_at_start": list(os.getloadavg()),
    }
    operator: Operator | None = None
    kwok: subprocess.Popen | None = None
    watches: list[Watch] = []
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        for crd in ("identityissuers.fedid.dev", "federatedidentities.fedid.dev"):
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
        cluster.kubectl("create", "namespace", operator_namespace)
        new_namespace(cluster, namespace, {RUN_LABEL: run})
        new_namespace(cluster, selector_namespace, {RUN_LABEL: run, "fedid-bench/selected": run})

        # kwok runs the fake node the pods are bound to; its pod IPs must not run out.
        cluster.apply(node_manifest(node))
        kwok_log = open(work / "kwok.log", "wb")
        (work / "kwok.yaml").write_text(KWOK_STAGES)
        kwok = subprocess.Popen([str(bins / "kwok"), "--kubeconfig", str(cluster.kubeconfig),
                                 "--config", str(work / "kwok.yaml"),
                                 "--manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake",
                                 "--cidr", "10.128.0.0/14", "--node-ip", "10.127.0.1"],
                                stdout=kwok_log, stderr=subprocess.STDOUT, env=cluster.env())

        def node_ready() -> bool:
            if kwok.poll() is not None:
                raise SystemExit(f"kwok exited: {(work / 'kwok.log').read_text()[-2000:]}")
            status = json.loads(cluster.kubectl("get", "node", node, "-o", "json").stdout).get("status") or {}
            return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])

        wait_until("kwok to make the fake node Ready", node_ready, 120)

        # fedid with its pod server, registered as a webhook exactly as e2e/test_pods.py does.
        port = free_port()
        cluster.apply(webhook_manifest(configuration, webhook, port, run))
        pod_args = ["--pod-server-addr", f"127.0.0.1:{port}", "--pod-tls-hosts", "127.0.0.1",
                    "--webhook-configuration", configuration, "--pod-token-url", f"https://127.0.0.1:{port}/v1/token",
                    "--token-request-qps", "100000", "--token-request-burst", "100000",
                    "--concurrency", str(args.reconcile_concurrency), "--leader-election", "false"]
        (work / "fedid").mkdir()
        operator = Operator(cluster=cluster, binary=binary, workdir=work / "fedid", namespace=operator_namespace,
                            name="fedid-bench", extra_args=pod_args)
        operator.start()
        pod_ca = work / "pod-server-ca.crt"

        def pod_server_ca() -> bool:
            secret = json.loads(cluster.kubectl("get", "secret", POD_TLS_SECRET, "-n", operator_namespace,
                                                "-o", "json").stdout)
            pod_ca.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
            bundle = json.loads(cluster.kubectl("get", "mutatingwebhookconfiguration", configuration,
                                                "-o", "json").stdout)["webhooks"][0]["clientConfig"].get("caBundle")
            return bool(bundle) and base64.b64decode(bundle) == pod_ca.read_bytes()

        wait_until("fedid's pod-server CA in the webhook configuration", pod_server_ca, 60)
        token_url = f"https://127.0.0.1:{port}/v1/token"
        cluster.apply(issuer_manifest(issuer, operator.issuer_url(issuer), {"names": [namespace]}))
        cluster.apply(issuer_manifest(selector_issuer, operator.issuer_url(selector_issuer),
                                      {"selector": {"matchLabels": {"fedid-bench/selected": run}}}))
        for name in (issuer, selector_issuer):
            cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{name}", "--timeout=120s")
        cluster.apply(identity_manifest(namespace, identity, issuer))
        cluster.apply(identity_manifest(selector_namespace, identity, selector_issuer))
        wait_for_reason(cluster, namespace, identity, "PodTemplate")
        wait_for_reason(cluster, selector_namespace, identity, "PodTemplate")

        control_plane = {path.name: int(path.read_text().strip()) for path in (state / "pids").iterdir()}
        meter = CpuMeter({**control_plane, "kwok": kwok.pid, "fedid": operator.process.pid}, "bench (client, watches)")

        # Watches: Secrets of the namespace (fedid's label), and its pods (admitted, Running).
        lock = threading.Lock()
        secret_seen: dict[str, float] = {}
        pod_seen: dict[str, float] = {}
        running_seen: dict[str, float] = {}

        def on_secret(kind: str, obj: dict, at: float) -> None:
            if kind != "ADDED":
                return
            for owner in obj["metadata"].get("ownerReferences") or []:
                if owner.get("kind") == "Pod":
                    with lock:
                        secret_seen.setdefault(owner["uid"], at)

        def on_pod(kind: str, obj: dict, at: float) -> None:
            uid = obj["metadata"]["uid"]
            with lock:
                pod_seen.setdefault(uid, at)
                if (obj.get("status") or {}).get("phase") == "Running":
                    running_seen.setdefault(uid, at)

        watches = [Watch(api, f"/api/v1/namespaces/{namespace}/secrets", {"labelSelector": IDENTITY_LABEL}, on_secret),
                   Watch(api, f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": "app=fedid-bench"}, on_pod)]
        for watch in watches:
            watch.start()
        for watch in watches:
            if not watch.connected.wait(30):
                raise SystemExit(f"the watch of {watch.path} did not connect")

        # A few warm-up pods (connections, caches), not counted.
        warm = create_pods_paced(api, namespace, [pod_body(f"warm-{n}", node, identity) for n in range(3)], 5, 3)
        if any(entry["status"] != 201 for entry in warm):
            raise SystemExit(f"warm-up pods were refused: {[entry.get('error') for entry in warm]}")
        wait_until("the warm-up pods' Secrets", lambda: all(entry["uid"] in secret_seen for entry in warm), 120, 0.2)

        # What each process uses idle (watches, heartbeats, leases), to read the CPU per pod against.
        meter.start()
        time.sleep(args.idle_seconds)
        results["idle_cores"] = {name: round(value / args.idle_seconds, 3) for name, value in meter.stop().items()}

        # 1a. Where the webhook's time goes, before the load: fedid's /mutate called directly
        # (TLS, parsing, the handler, the answer; no apiserver), one at a time; then pods created
        # at a low rate, read at the apiserver.
        mutate_session = requests.Session()
        mutate_session.trust_env = False
        mutate_session.verify = str(pod_ca)
        mutate_url = f"https://127.0.0.1:{port}/mutate"
        direct: list[float] = []
        direct_outcomes: collections.Counter[str] = collections.Counter()
        for n in range(args.probe_pods * 2):
            review = admission_review(namespace, pod_body(f"direct-{n}", node, identity))
            started = time.monotonic()
            answer = mutate_session.post(mutate_url, json=review, timeout=30)
            direct.append(time.monotonic() - started)
            body = (answer.json().get("response") or {}) if answer.ok else {}
            direct_outcomes["patched" if body.get("allowed") and body.get("patch") else
                            f"{answer.status_code} {str(body.get('status', {}).get('message', ''))[:80]}"] += 1
        probe_before = apiserver_metrics(cluster)
        probe = create_pods_paced(api, namespace, [pod_body(f"probe-{n}", node, identity)
                                                   for n in range(args.probe_pods)], args.probe_rate, 4)
        probe_after = apiserver_metrics(cluster)
        wanted = {"name": webhook, "type": "admit", "operation": "CREATE"}
        results["webhook_low_rate"] = {
            "direct_mutate_ms": {**percentiles(direct), "outcomes": dict(direct_outcomes),
                                 "note": "the bench POSTs an AdmissionReview to fedid's /mutate, one at a time"},
            "pods": args.probe_pods, "rate_per_s": args.probe_rate,
            "apiserver_histogram": summarize_histogram(histogram_delta(histogram(probe_before, WEBHOOK_METRIC, wanted),
                                                                       histogram(probe_after, WEBHOOK_METRIC, wanted))),
            "client_create_latency_ms": percentiles([e["answered"] - e["sent"] for e in probe if e["status"] == 201]),
        }

        # 1 and 2. Labelled pods at --rate, with the anchor's unlabelled pods (no webhook call)
        # spread evenly among them, so that both are created under the same load.
        bodies = [pod_body(f"job-{n}", node, identity) for n in range(args.pods)]
        for n in range(args.unlabelled):
            bodies.insert(round((n + 0.5) * len(bodies) / args.unlabelled), pod_body(f"plain-{n}", node, None))
        stream_rate = args.rate * len(bodies) / max(args.pods, 1)
        print(f"creating {args.pods} labelled pods at {args.rate:g}/s with {args.unlabelled} unlabelled among them",
              flush=True)
        metrics_before = apiserver_metrics(cluster)
        fedid_before = operator.get("/metrics").text
        connections = ConnectionCounter(port)
        connections.start()
        load = LoadSampler(meter)
        load.start()
        meter.start()
        began = time.monotonic()
        created_all = create_pods_paced(api, namespace, bodies, stream_rate, args.create_workers)
        created_by = time.monotonic()
        connections.stop()
        metrics_after_create = apiserver_metrics(cluster)
        fedid_after_create = operator.get("/metrics").text
        created = [entry for entry in created_all if entry["name"].startswith("job-")]
        unlabelled = [entry for entry in created_all if entry["name"].startswith("plain-")]
        admitted = [entry for entry in created if entry["status"] == 201]

        def all_secrets() -> bool:
            with lock:
                return all(entry["uid"] in secret_seen for entry in admitted)

        settle_deadline = time.monotonic() + args.settle_timeout
        while not all_secrets() and time.monotonic() < settle_deadline:
            time.sleep(0.2)
        secrets_by = time.monotonic()
        create_cpu = meter.stop()
        load.stop()
        metrics_after_secrets = apiserver_metrics(cluster)
        fedid_after_secrets = operator.get("/metrics").text
        running_deadline = time.monotonic() + 60
        while time.monotonic() < running_deadline:
            with lock:
                if all(entry["uid"] in running_seen for entry in admitted):
                    break
            time.sleep(0.5)

        with lock:
            delays = [secret_seen[entry["uid"]] - entry["answered"] for entry in admitted if entry["uid"] in secret_seen]
            watch_lag = [pod_seen[entry["uid"]] - entry["answered"] for entry in admitted if entry["uid"] in pod_seen]
            to_running = [running_seen[entry["uid"]] - entry["answered"] for entry in admitted
                          if entry["uid"] in running_seen]
        apiserver_webhook = summarize_histogram(histogram_delta(
            histogram(metrics_before, WEBHOOK_METRIC, {"name": webhook, "type": "admit", "operation": "CREATE"}),
            histogram(metrics_after_create, WEBHOOK_METRIC, {"name": webhook, "type": "admit", "operation": "CREATE"})))
        fedid_webhook = summarize_histogram(histogram_delta(histogram(fedid_before, FEDID_WEBHOOK_METRIC),
                                                            histogram(fedid_after_create, FEDID_WEBHOOK_METRIC)))
        reviews = counts_delta(
            {f"{labels.get('outcome')}": value for labels, value in samples(fedid_before, "fedid_webhook_reviews_total")},
            {f"{labels.get('outcome')}": value for labels, value in samples(fedid_after_create, "fedid_webhook_reviews_total")})
        sends = [entry["sent"] for entry in created_all]
        results["webhook"] = {
            "webhook_name": webhook,
            "apiserver_histogram": apiserver_webhook,
            "apiserver_p99_bucket_note": ("the apiserver's buckets are coarse: p99 lies in the bucket "
                                          f"{apiserver_webhook.get('p99_bucket_ms')} ms; the interpolated value "
                                          "assumes an even spread inside it"),
            "fedid_histogram": fedid_webhook,
            "fedid_reviews": reviews,
            "connections_to_pod_server": connections.figures(),
            "client_create_latency_ms": {"labelled": percentiles([e["answered"] - e["sent"] for e in admitted]),
                                         "unlabelled_anchor": percentiles([e["answered"] - e["sent"] for e in unlabelled
                                                                           if e["status"] == 201])},
            "goal_p99_ms": 10,
        }
        create_seconds = created_by - began
        results["pod_secrets"] = {
            "pods": args.pods, "created": len(admitted),
            "refused": collections.Counter(str(entry["status"]) for entry in created if entry["status"] != 201),
            "refusals_sample": [entry.get("error") for entry in created if entry["status"] != 201][:3],
            "target_rate_per_s": args.rate,
            "achieved_rate_per_s": round((len(created) - 1) / (max(sends) - min(sends)), 1) if len(sends) > 1 else None,
            "unlabelled_pods_among_them": len(unlabelled),
            "send_lag_behind_schedule_ms": percentiles([entry["lag"] for entry in created_all]),
            "with_secret": len(delays),
            "create_to_secret_ms": percentiles(delays),
            "secret_after_last_create_s": round(secrets_by - created_by, 2),
            "order": overtaken(admitted, secret_seen),
            "watch_delivery_of_own_pod_ms": percentiles(watch_lag),
            "running_via_kwok": len(to_running),
            "create_to_running_ms": percentiles(to_running),
            "watch_reconnects": {watch.path: watch.reconnects for watch in watches},
            "seconds_creating": round(create_seconds, 1),
            "cpu_seconds": {name: round(value, 2) for name, value in create_cpu.items()},
            # Per labelled pod, though the unlabelled pods' creates (and kwok's work on them) are in the window.
            "cpu_ms_per_pod": cpu_per_request_ms(create_cpu, len(admitted)),
            "cores_busy": round(sum(create_cpu.values()) / max(secrets_by - began, 1e-9), 2),
            "apiserver_requests": counts_delta(request_counts(metrics_before), request_counts(metrics_after_secrets)),
            "apiserver_requests_per_labelled_pod": counts_delta(
                request_counts(metrics_before), request_counts(metrics_after_secrets), per=len(admitted)),
            "fedid_reconciles_per_labelled_pod": {
                controller: round(value / max(len(admitted), 1), 2) for controller, value in counts_delta(
                    {labels.get("controller", "?"): v for labels, v in samples(fedid_before, "fedid_reconciles_total")},
                    {labels.get("controller", "?"): v for labels, v in samples(fedid_after_secrets,
                                                                                "fedid_reconciles_total")}).items()},
            "fedid_pod_tokens_issued": int(
                sum(value for _, value in samples(fedid_after_secrets, "fedid_pod_tokens_issued_total"))
                - sum(value for _, value in samples(fedid_before, "fedid_pod_tokens_issued_total"))),
            "goal_p99_ms": 1000,
        }
        for watch in watches:
            watch.stop()
        print(f"{len(delays)}/{len(admitted)} pods got a Secret; {len(to_running)} Running", flush=True)

        # 3. Pull rate: TokenRequest at the apiserver against fedid's POST /v1/token.
        def pod_token(ns: str, pod: dict, audience: str) -> str:
            response = api.post(f"/api/v1/namespaces/{ns}/serviceaccounts/default/token", {
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [audience], "expirationSeconds": 3600,
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod["name"], "uid": pod["uid"]}}})
            response.raise_for_status()
            return response.json()["status"]["token"]

        pull_pods = [{"name": entry["name"], "uid": entry["uid"]} for entry in admitted[:args.pull_pods]]
        bearers = [pod_token(namespace, pod, TOKEN_REQUEST_AUDIENCE) for pod in pull_pods]
        sides: dict[str, Callable[[requests.Session, int], int]] = {}

        def anchor(session: requests.Session, index: int) -> int:
            pod = pull_pods[index % len(pull_pods)]
            return api.post(f"/api/v1/namespaces/{namespace}/serviceaccounts/default/token", {
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [PULL_AUDIENCE], "expirationSeconds": 3600,
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod["name"],
                                            "uid": pod["uid"]}}}, session=session).status_code

        def fedid_pull(tokens: list[str]) -> Callable[[requests.Session, int], int]:
            def one(session: requests.Session, index: int) -> int:
                return session.post(token_url, json={"audience": PULL_AUDIENCE}, timeout=60,
                                    headers={"Authorization": f"Bearer {tokens[index % len(tokens)]}"}).status_code
            return one

        def fedid_session() -> requests.Session:
            session = requests.Session()
            session.trust_env = False
            session.verify = str(pod_ca)
            return session

        sides["apiserver TokenRequest"] = anchor
        sides["fedid /v1/token"] = fedid_pull(bearers)
        pools = {"apiserver TokenRequest": SessionPool(api.new_session, args.concurrency),
                 "fedid /v1/token": SessionPool(fedid_session, args.concurrency)}
        if args.selector_phase:
            # A few pods in the namespace the selector issuer allows, created the same way.
            selected = create_pods_paced(api, selector_namespace,
                                         [pod_body(f"sel-{n}", node, identity) for n in range(args.pull_pods)],
                                         args.rate, args.create_workers)
            selected_pods = [{"name": e["name"], "uid": e["uid"]} for e in selected if e["status"] == 201]
            if selected_pods:
                selected_bearers = [pod_token(selector_namespace, pod, TOKEN_REQUEST_AUDIENCE) for pod in selected_pods]
                sides["fedid /v1/token (selector issuer)"] = fedid_pull(selected_bearers)
                pools["fedid /v1/token (selector issuer)"] = SessionPool(fedid_session, args.concurrency)
                wait_until("fedid to answer the selector identity's pods",
                           lambda: fedid_pull(selected_bearers)(fedid_session(), 0) == 200, 60, 0.5)
        # Warm-up: one request per pod and session on each side (connections, TokenReview cache).
        for name, one in sides.items():
            warmup = pull(pools[name], args.concurrency * 2 + args.pull_pods, args.concurrency, one)
            if warmup["statuses"].get(200 if "fedid" in name else 201, 0) == 0:
                raise SystemExit(f"{name} answered nothing right in the warm-up: {dict(warmup['statuses'])} "
                                 f"{warmup['errors']}")
        per_round = max(1, args.requests // max(1, args.rounds))
        totals = {name: {"seconds": 0.0, "latencies": [], "statuses": collections.Counter(), "errors": [],
                         "cpu": {}, "apiserver": collections.Counter(), "fedid_outcomes": collections.Counter()}
                  for name in sides}
        print(f"pulling: {per_round * args.rounds} requests per side, {args.concurrency} in flight, "
              f"{args.rounds} rounds", flush=True)
        for _ in range(args.rounds):
            for name, one in sides.items():
                before_api, before_fedid = apiserver_metrics(cluster), operator.get("/metrics").text
                meter.start()
                outcome = pull(pools[name], per_round, args.concurrency, one)
                spent = meter.stop()
                after_api, after_fedid = apiserver_metrics(cluster), operator.get("/metrics").text
                total = totals[name]
                total["seconds"] += outcome["seconds"]
                total["latencies"] += outcome["latencies"]
                total["statuses"].update(outcome["statuses"])
                total["errors"] += outcome["errors"]
                add_cpu(total["cpu"], spent)
                total["apiserver"].update(counts_delta(request_counts(before_api), request_counts(after_api)))
                total["fedid_outcomes"].update(counts_delta(
                    {labels.get("outcome", "?"): value for labels, value in samples(before_fedid, "fedid_token_requests_total")},
                    {labels.get("outcome", "?"): value for labels, value in samples(after_fedid, "fedid_token_requests_total")}))
        pulls: dict = {}
        for name, total in totals.items():
            ok = total["statuses"].get(200 if "fedid" in name else 201, 0)
            count = sum(total["statuses"].values())
            pulls[name] = {
                "requests": count, "ok": ok, "statuses": {str(k): v for k, v in total["statuses"].items()},
                "errors_sample": total["errors"][:3],
                "seconds": round(total["seconds"], 2),
                "rate_per_s": round(ok / total["seconds"], 1) if total["seconds"] else None,
                "latency_ms": percentiles(total["latencies"]),
                "cpu_seconds": {k: round(v, 2) for k, v in total["cpu"].items()},
                "cpu_ms_per_request": cpu_per_request_ms(total["cpu"], count),
                "cores_busy": round(sum(total["cpu"].values()) / max(total["seconds"], 1e-9), 2),
                "apiserver_requests_per_request": {k: round(v / max(count, 1), 3)
                                                   for k, v in total["apiserver"].most_common(8)},
                **({"fedid_outcomes": dict(total["fedid_outcomes"])} if "fedid" in name else {}),
            }
        anchor_rate = pulls["apiserver TokenRequest"]["rate_per_s"] or 0
        results["pull"] = {
            "sides": pulls,
            "ratio_fedid_to_apiserver": round(pulls["fedid /v1/token"]["rate_per_s"] / anchor_rate, 2)
            if anchor_rate else None,
            "goal_ratio": 0.8,
        }
        if "fedid /v1/token (selector issuer)" in pulls and anchor_rate:
            results["pull"]["ratio_fedid_selector_to_apiserver"] = round(
                pulls["fedid /v1/token (selector issuer)"]["rate_per_s"] / anchor_rate, 2)
        # With every core busy, rates go as 1 / CPU per request.
        fedid_cpu = pulls["fedid /v1/token"]["cpu_ms_per_request"]["total"]
        if fedid_cpu:
            results["pull"]["cpu_bound_ratio"] = round(
                pulls["apiserver TokenRequest"]["cpu_ms_per_request"]["total"] / fedid_cpu, 2)
        results["load_average_at_end"] = list(os.getloadavg())
        window = 1.0 if created_by - began < 20 else 5.0
        results["pod_secrets"]["timeline"] = timeline(created_all, secret_seen, load.samples, began, window)
        results["pod_secrets"]["timeline_window_s"] = window
        results["work_dir"] = str(work)
        results["raw"] = {
            "create_to_secret_s": [round(d, 4) for d in delays],
            "client_create_latency_s": [round(e["answered"] - e["sent"], 4) for e in admitted],
            # Per pod: name, sent (s after the first), create latency, create -> Secret, create -> Running (s).
            "pods": [[e["name"], round(e["sent"] - began, 3), round(e["answered"] - e["sent"], 4),
                      round(secret_seen[e["uid"]] - e["answered"], 4) if e.get("uid") in secret_seen else None,
                      round(running_seen[e["uid"]] - e["answered"], 4) if e.get("uid") in running_seen else None]
                     for e in created_all],
            "machine_load": load.samples,
        }
        print_summary(results)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"raw figures: {args.out}")
    finally:
        for watch in watches:
            watch.stop()
        if operator is not None:
            operator.stop()
        if kwok is not None:
            kwok.terminate()
            try:
                kwok.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kwok.kill()
                kwok.wait(timeout=10)
        if own_cluster:
            subprocess.run([str(CLUSTER_DIR / "down"), str(state)], check=False, capture_output=True)
        else:
            # A reused cluster keeps running: leave nothing of this run that acts on others.
            cluster.kubectl("delete", "mutatingwebhookconfiguration", configuration, "--ignore-not-found", check=False)
            for ns in (namespace, selector_namespace, operator_namespace):
                cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)
            for name in (issuer, selector_issuer):
                cluster.kubectl("delete", "identityissuer", name, "--wait=false", "--ignore-not-found", check=False)
            cluster.kubectl("delete", "node", node, "--wait=false", "--ignore-not-found", check=False)
        shutil.rmtree(api.dir, ignore_errors=True)


def webhook_goal(at_apiserver: dict) -> str:
    """Whether the apiserver's p99 is within 10 ms, as far as its coarse buckets can tell."""
    bucket = at_apiserver.get("p99_bucket_ms")
    if not bucket:
        return "n/a"
    lower, upper = bucket
    if upper is not None and upper <= 10:
        return "met"
    if lower >= 10:
        return "NOT met"
    interpolated = at_apiserver.get("p99_ms")
    return f"{'met' if interpolated is not None and interpolated <= 10 else 'NOT met'} (interpolated: the bucket spans 10 ms)"


def print_summary(results: dict) -> None:
    def goal(met: bool | None) -> str:
        return "n/a" if met is None else ("met" if met else "NOT met")

    build = results["fedid_binary"]
    webhook, secrets, pull_results = results["webhook"], results["pod_secrets"], results["pull"]
    at_apiserver, own = webhook["apiserver_histogram"], webhook["fedid_histogram"]
    low = results["webhook_low_rate"]
    p99_bucket = at_apiserver.get("p99_bucket_ms")
    rows = [
        ("fedid build", f"{build['build']}{' (older than sources)' if build['older_than_sources'] else ''}", ""),
        ("at --rate: webhook at apiserver p50 / p99",
         f"{at_apiserver.get('p50_ms')} / {at_apiserver.get('p99_ms')} ms (n={at_apiserver['count']})",
         f"p99 <= 10 ms: {webhook_goal(at_apiserver)}"),
        ("  p99 bucket", f"{p99_bucket} ms", "buckets " + ", ".join(str(b) for b in at_apiserver["bucket_bounds_ms"][:5]) + " ms…"),
        ("low rate: at apiserver p50 / p99", f"{low['apiserver_histogram'].get('p50_ms')} / "
         f"{low['apiserver_histogram'].get('p99_ms')} ms (bucket {low['apiserver_histogram'].get('p99_bucket_ms')})",
         f"{low['pods']} pods at {low['rate_per_s']:g}/s"),
        ("low rate: /mutate direct p50 / p99", f"{low['direct_mutate_ms'].get('p50')} / {low['direct_mutate_ms'].get('p99')} ms",
         "bench -> fedid, one at a time"),
        ("at --rate: webhook in fedid p50 / p99", f"{own.get('p50_ms')} / {own.get('p99_ms')} ms (bucket {own.get('p99_bucket_ms')})", ""),
        ("at --rate: pod create at client p50 / p99",
         f"{webhook['client_create_latency_ms']['labelled'].get('p50')} / "
         f"{webhook['client_create_latency_ms']['labelled'].get('p99')} ms",
         f"unlabelled: {webhook['client_create_latency_ms']['unlabelled_anchor'].get('p50')} / "
         f"{webhook['client_create_latency_ms']['unlabelled_anchor'].get('p99')} ms"),
        ("connections to the pod server", f"{webhook['connections_to_pod_server']['distinct_seen']} distinct, "
         f"{webhook['connections_to_pod_server']['most_at_once']} at most at once",
         f"for {webhook['apiserver_histogram']['count']} reviews"),
        ("pods created (rate)", f"{secrets['created']}/{secrets['pods']} at {secrets['achieved_rate_per_s']}/s",
         f"target {secrets['target_rate_per_s']}/s"),
        ("pods with a Secret", f"{secrets['with_secret']}/{secrets['created']}", ""),
        ("create -> Secret p50 / p99 / max",
         f"{secrets['create_to_secret_ms'].get('p50')} / {secrets['create_to_secret_ms'].get('p99')} / "
         f"{secrets['create_to_secret_ms'].get('max')} ms",
         f"p99 <= 1 s: {goal(None if 'p99' not in secrets['create_to_secret_ms'] else secrets['create_to_secret_ms']['p99'] <= 1000 and secrets['with_secret'] == secrets['created'])}"),
        ("Running via kwok", f"{secrets['running_via_kwok']}/{secrets['created']}",
         f"create -> Running p50 {secrets['create_to_running_ms'].get('p50')} ms"),
        ("CPU per pod (total)", f"{secrets['cpu_ms_per_pod']['total']} ms", f"fedid {secrets['cpu_ms_per_pod'].get('fedid')} ms"),
    ]
    for name, side in pull_results["sides"].items():
        rows.append((f"pull: {name}", f"{side['rate_per_s']}/s ({side['ok']}/{side['requests']} ok)",
                     f"p50 {side['latency_ms'].get('p50')} ms, CPU {side['cpu_ms_per_request']['total']} ms/req"))
    ratio = pull_results.get("ratio_fedid_to_apiserver")
    rows.append(("pull ratio fedid / apiserver", str(ratio),
                 f">= 0.8: {goal(None if ratio is None else ratio >= 0.8)}; CPU-bound ratio "
                 f"{pull_results.get('cpu_bound_ratio')}"))
    if "ratio_fedid_selector_to_apiserver" in pull_results:
        rows.append(("pull ratio (selector issuer)", str(pull_results["ratio_fedid_selector_to_apiserver"]), ""))
    print(f"\ncreates by {secrets.get('timeline_window_s')} s window: pods, create p50/max ms, create -> Secret p50/max ms, cores busy (outside the run)")
    for row in secrets.get("timeline", []):
        print(f"  {row['from_s']:>5.0f}s  {row['pods']:>4}  {row['create_ms_p50']}/{row['create_ms_max']}  "
              f"{row['secret_ms_p50']}/{row['secret_ms_max']}  {row['machine_cores']} ({row['other_cores']})")
    width = max(len(row[0]) for row in rows)
    middle = max(len(row[1]) for row in rows)
    print()
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<{middle}}  {note}")
    print()
    print(json.dumps({key: value for key, value in results.items() if key != "raw"}, indent=2, default=str))


if __name__ == "__main__":
    main()
