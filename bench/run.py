#!/usr/bin/env python3
"""fedid's benchmarks, each figure beside the anchor it must approach, measured in one run.

Called by `bench/run` (which installs wrk, nginx and matplotlib first). Starts its own control plane
(e2e/cluster/up, with an apiserver audit log of fedid's writes, lists and watches), runs fedid
(FEDID_BIN, default target/release/fedid) as the Helm chart's ServiceAccount, and measures, in this
order:

  scope       K namespaces of identities beside unrelated Secrets elsewhere: fedid started cold
              cluster-wide (the chart's default rights) and with --watch-namespaces (a second
              release's namespaced rights), one at a time on the same objects; time to every
              identity Ready, lists, watches and writes (audit log), RSS, CPU, and what each
              ServiceAccount can read (`kubectl get secrets`), as ratios namespaced/cluster-wide
              (its namespaces are deleted at the end: it leaves nothing for the others)
  serving     JWKS and discovery at 64 connections with wrk, plain HTTP and TLS, against nginx
              serving the same bytes from files with the same certificate (rounds interleaved)
  latency     single identities on an idle operator: create -> Secret present
  throughput  N identities created at client concurrency 16 -> Ready with their Secret, and the
              writes fedid made per identity (audit log, by verb and resource)
  steady      T seconds with nothing due: fedid's writes (audit log; the Lease apart)
  anchor      fedid stopped: a plain client doing the minimum writes per identity (identity
              create, Secret create, status patch) at the same concurrency, then raw Secret creates
  memory      U unrelated 1 KB Secrets, then fedid started again (restart): time to /readyz, the
              writes after it, RSS after settling and its peak
  rotation    a forced key rotation of the N identities' issuer (nothing due: what it costs), then
              R identities of another issuer until every one signs with the new key
              (fedid restarted with --kube-api-qps and --kube-api-burst at twice the renewal
              write rate, at least 25: the busiest second of writes must stay within qps + burst)
  signing     core/examples/signing.rs: fedid's mint path against raw aws-lc-rs RS256 signatures on
              one thread (and jsonwebtoken::encode, the path before the parsed-key signer), plus
              fedid's own signing histogram at idle and `openssl speed rsa2048` as references
  pods, exchange   e2e/bench/pods.py and e2e/bench/exchange_minio.py, each on its own cluster

Prints one table (scenario, fedid, anchor, ratio, goal, met?), writes bench/results/<date>.json and
bench/results/<date>.svg. Nothing here fails on a slow machine: goals are reported, not enforced;
the exit code is non-zero only when a scenario could not be run at all.
"""

from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures
import datetime
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
E2E = REPO / "e2e"
sys.path.insert(0, str(E2E))

import requests  # noqa: E402

from bench.cpu import CpuMeter, cpu_seconds  # noqa: E402
from bench.pods import ApiServer, Watch, counts_delta, percentiles, request_counts, samples  # noqa: E402
from conftest import CLUSTER_DIR, Cluster, _build_tools  # noqa: E402
from fedid_harness import OPERATOR_NAMESPACE, Operator, free_port, install_chart_service_account  # noqa: E402

GROUP = "fedid.dev/v1alpha1"
IDENTITY_LABEL = "fedid.dev/identity"
SA_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:fedid"
SCOPED_RELEASE = "fedid-scoped"  # the scope scenario's second release, with watchNamespaces
SCOPED_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SCOPED_RELEASE}"
LEASE = "fedid-bench"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
READ_VERBS = ("list", "watch")

SIZES = {
    "quick": {"identities": 500, "latency_samples": 20, "steady_s": 30, "unrelated": 5000, "settle_s": 15,
              "rotation_identities": 300, "wrk_seconds": 5, "wrk_rounds": 1,
              "pods_args": ["--quick", "--rounds", "1"],
              "exchange_args": ["--identities", "200", "--budget-identities", "40"],
              "scope_namespaces": 4, "scope_identities": 200, "scope_other_namespaces": 2, "scope_unrelated": 500,
              "scope_secret_bytes": 4096, "scope_rounds": 1},
    "full": {"identities": 10000, "latency_samples": 100, "steady_s": 300, "unrelated": 100000, "settle_s": 60,
             "rotation_identities": 10000, "wrk_seconds": 10, "wrk_rounds": 2,
             "pods_args": ["--pods", "2000", "--rate", "50", "--requests", "2000"],
             "exchange_args": ["--identities", "1000", "--budget-identities", "200"],
             "scope_namespaces": 10, "scope_identities": 2000, "scope_other_namespaces": 5, "scope_unrelated": 5000,
             "scope_secret_bytes": 4096, "scope_rounds": 3},
}


# --- small helpers ---------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def bounded_wait(what: str, check: Callable[[], object], timeout: float, interval: float = 0.5) -> object:
    """Polls `check` until truthy; raises TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except (requests.RequestException, subprocess.SubprocessError, KeyError, ValueError, AssertionError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def children(parent: int) -> list[int]:
    """The pids whose parent is `parent` (nginx's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def stop_watch(watch: Watch) -> None:
    """Stops a watch without closing its stream from this thread (which blocks until the stream's
    next bytes, up to a minute): the daemon thread ends with its stream."""
    watch.stopped = True


def _fail(message: str) -> None:
    raise RuntimeError(message)


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def machine() -> dict:
    memory = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            memory[key] = int(value.split()[0])
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.rstrip("\n")

    return {"cores": os.cpu_count(), "cpu_model": model,
            "memory_gib": round(memory.get("MemTotal", 0) / 2**20, 1),
            "memory_available_gib_at_start": round(memory.get("MemAvailable", 0) / 2**20, 1),
            "kernel": os.uname().release, "git_commit": git("rev-parse", "HEAD"),
            "git_modified": [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()],
            "load_average_at_start": load()}


def rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def ratio(value: float | None, reference: float | None) -> float | None:
    return round(value / reference, 2) if value is not None and reference else None


# --- the apiserver's audit log of fedid's requests -----------------------------------------------


AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["{SA_USER}", "{SCOPED_USER}"]
  verbs: [{", ".join(WRITE_VERBS + READ_VERBS)}]
- level: None
"""


class AuditLog:
    """fedid's writes, lists and watches as the apiserver recorded them (the policy logs only its
    ServiceAccounts' requests of those verbs, at Metadata level: no object, no Secret data).
    `between(t0, t1)` counts the writes of the chart's ServiceAccount whose response completed in
    the window, `between(t0, t1, user, READ_VERBS)` the lists and watches of `user` (a watch when
    its response started, i.e. when it was opened, or when it was refused)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.entries: list[tuple[float, str, str, int, str]] = []  # (time, verb, resource[/sub], code, user)

    def _read(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            code = (event.get("responseStatus") or {}).get("code", 0)
            if event.get("verb") == "watch" and event.get("stage") == "ResponseComplete" and code < 400:
                continue  # a watch that was opened (its ResponseStarted is counted) has now ended
            stamp = datetime.datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00")).timestamp()
            self.entries.append((stamp, event.get("verb", "?"), resource, code,
                                 (event.get("user") or {}).get("username", "?")))

    def between(self, start: float, end: float, user: str = SA_USER, verbs: tuple[str, ...] = WRITE_VERBS) -> dict:
        time.sleep(1.5)  # the audit backend writes in batches
        self._read()
        chosen = [entry for entry in self.entries
                  if start <= entry[0] <= end and entry[4] == user and entry[1] in verbs]
        by = collections.Counter(f"{verb} {resource}" for _, verb, resource, _, _ in chosen)
        leases = sum(count for key, count in by.items() if key.endswith(" leases"))
        per_second = collections.Counter(int(at) for at, _, resource, _, _ in chosen if resource != "leases")
        return {"writes": len(chosen) - leases, "lease_writes": leases,
                "by_verb_resource": dict(by.most_common()),
                "failed": sum(1 for entry in chosen if entry[3] >= 400),
                "failed_by_verb_resource": dict(collections.Counter(
                    f"{verb} {resource} {code}" for _, verb, resource, code, _ in chosen if code >= 400)),
                "busiest_second": max(per_second.values(), default=0),
                "per_second": sorted(per_second.items())}


# --- fedid -------------------------------------------------------------------------------------


class Fedid(Operator):
    """`fedid run` as the chart's ServiceAccount, RUST_LOG=info (the harness's debug logging
    costs CPU at 10,000 identities), timed from spawn to /readyz by 20 ms polls."""

    plain: bool = False
    ready_after_s: float | None = None

    def start(self) -> None:
        self.starts += 1
        tls = [] if self.plain else ["--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key)]
        spawned = time.monotonic()
        self.process = subprocess.Popen(
            [str(self.binary), "run", "--namespace", self.namespace, "--http-addr", f"127.0.0.1:{self.port}", *tls,
             "--min-token-lifetime", "30s", "--renew-before-expiry", "5s", *self.extra_args],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
            env={**self.cluster.env(), **({"KUBECONFIG": str(self.kubeconfig)} if self.kubeconfig else {}),
                 "RUST_LOG": "info", "POD_NAME": self.name})
        deadline = spawned + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"fedid exited with {self.process.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                if self.get("/readyz").status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("fedid /readyz")
            time.sleep(0.02)
        self.ready_after_s = round(time.monotonic() - spawned, 3)

    @property
    def base_url(self) -> str:
        return f"{'http' if self.plain else 'https'}://127.0.0.1:{self.port}"

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(f"{self.base_url}{path}", verify=str(self.ca), timeout=10, **kwargs)


class Readiness:
    """When each identity was first seen Ready (its Ready condition True) and its token Secret
    first added, by identity name, from watches of identities and labelled Secrets (`Bench.readiness`)."""

    def __init__(self) -> None:
        self.ready: dict[str, float] = {}
        self.secrets: dict[str, float] = {}
        self.lock = threading.Lock()
        self.watches: list[Watch] = []

    def on_identity(self, kind: str, obj: dict, at: float) -> None:
        for entry in (obj.get("status") or {}).get("conditions") or []:
            if entry.get("type") == "Ready" and entry.get("status") == "True":
                with self.lock:
                    self.ready.setdefault(obj["metadata"]["name"], time.time())

    def on_secret(self, kind: str, obj: dict, at: float) -> None:
        if kind == "ADDED":
            with self.lock:
                self.secrets.setdefault(obj["metadata"]["name"].removesuffix("-token"), time.time())

    def all_done(self, names: list[str]) -> bool:
        with self.lock:
            return all(n in self.ready and n in self.secrets for n in names)

    def finished(self, names: list[str]) -> dict[str, float]:
        """When each of `names` that got there was Ready with its Secret."""
        with self.lock:
            return {n: max(self.ready[n], self.secrets[n]) for n in names if n in self.ready and n in self.secrets}

    def stop(self) -> None:
        for watch in self.watches:
            stop_watch(watch)


class RssSampler(threading.Thread):
    """fedid's RSS twice a second, tagged with the phase running."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pid: int | None = None
        self.phase = "start"
        self.samples: list[tuple[float, str, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            if self.pid:
                try:
                    self.samples.append((time.time(), self.phase, rss_kib(self.pid)["VmRSS"]))
                except (OSError, KeyError):
                    pass

    def peak_mib(self, phase: str) -> float | None:
        values = [kib for _, tag, kib in self.samples if tag == phase]
        return round(max(values) / 1024, 1) if values else None


# --- wrk and nginx -------------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk(url: str, seconds: int, connections: int = 64, threads: int = 2) -> dict:
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    found: dict = {"raw": out[-1500:]}
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    found["rps"] = float(match.group(1)) if match else None
    for quantile in ("50", "90", "99"):
        match = re.search(rf"^\s+{quantile}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        found[f"p{quantile}_ms"] = round(float(match.group(1)) * _UNITS[match.group(2)], 3) if match else None
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    found["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(r"Socket errors:(.*)", out)
    found["socket_errors"] = match.group(1).strip() if match else ""
    return found


def tls_parameters(port: int) -> str:
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief"], input="",
                         capture_output=True, text=True, timeout=15)
    text = out.stdout + out.stderr
    wanted = [line.strip() for line in text.splitlines() if "Protocol version" in line or "Ciphersuite" in line
              or "Negotiated TLS1.3 group" in line or "Server Temp Key" in line or "Peer signature type" in line]
    return "; ".join(wanted)


class Nginx:
    """nginx (Debian) serving files with a plain and a TLS listener, in the foreground."""

    def __init__(self, work: Path, cert: Path, key: Path, headers: dict[str, str]) -> None:
        self.dir = work / "nginx"
        (self.dir / "www").mkdir(parents=True)
        self.plain_port, self.tls_port = free_port(), free_port()
        extra = "".join(f'      add_header {name} "{value}";\n' for name, value in headers.items())
        (self.dir / "nginx.conf").write_text(f"""\
user root;
worker_processes auto;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 120s;
  keepalive_requests 10000000;
  client_body_temp_path {self.dir}/tmp-body;
  proxy_temp_path {self.dir}/tmp-proxy;
  fastcgi_temp_path {self.dir}/tmp-fastcgi;
  uwsgi_temp_path {self.dir}/tmp-uwsgi;
  scgi_temp_path {self.dir}/tmp-scgi;
  default_type application/json;
  types {{ }}
  open_file_cache max=100 inactive=60s;
  open_file_cache_valid 60s;
  server {{
    listen 127.0.0.1:{self.plain_port};
    root {self.dir}/www;
    location / {{
{extra}    }}
  }}
  server {{
    listen 127.0.0.1:{self.tls_port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:tls:1m;
    root {self.dir}/www;
    location / {{
{extra}    }}
  }}
}}
""")
        self.process: subprocess.Popen | None = None

    def put(self, path: str, body: bytes) -> None:
        target = self.dir / "www" / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)

    def start(self) -> None:
        self.process = subprocess.Popen(["nginx", "-c", str(self.dir / "nginx.conf"), "-g", "daemon off;"],
                                        stdout=open(self.dir / "stdout.log", "wb"), stderr=subprocess.STDOUT)
        bounded_wait("nginx", lambda: requests.get(f"http://127.0.0.1:{self.plain_port}/", timeout=2).status_code
                     in (200, 403, 404) if self.process.poll() is None else _fail("nginx exited: "
                     + (self.dir / "stdout.log").read_text()[-500:]), 20, 0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


# --- the run ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = dict(SIZES["quick" if args.quick else "full"])
        for key in ("identities", "unrelated", "rotation_identities"):
            if getattr(args, key) is not None:
                self.size[key] = getattr(args, key)
        if args.steady_seconds is not None:
            self.size["steady_s"] = args.steady_seconds
        self.work = Path(tempfile.mkdtemp(prefix="fedid-bench-run-"))
        self.results: dict = {"mode": "quick" if args.quick else "full", "sizes": self.size,
                              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine(), "scenarios": {}, "errors": {}}
        self.binary = Path(args.fedid_bin or os.environ.get("FEDID_BIN") or REPO / "target" / "release" / "fedid")
        self.rss = RssSampler()
        self.fedid: Fedid | None = None
        self.extra: list[str] = []

    # The cluster, the issuer, fedid.

    def setup(self) -> None:
        if not self.binary.exists():
            raise SystemExit(f"no fedid binary at {self.binary}: set FEDID_BIN or pass --fedid-bin")
        stat = self.binary.stat()
        help_text = subprocess.run([str(self.binary), "run", "--help"], capture_output=True, text=True).stdout
        api_rate_flags = sorted(set(re.findall(r"--((?:kube|api|client)[\w-]*-(?:qps|burst))", help_text)))
        self.results["fedid_binary"] = {"path": str(self.binary), "size": stat.st_size,
                                        "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stat.st_mtime)),
                                        "client_rate_flags": api_rate_flags}
        self.api_rate_flags = api_rate_flags
        self.bins = _build_tools()
        self.state = self.work / "cluster"
        policy = self.work / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        self.audit = AuditLog(self.work / "audit.log")
        env = {**os.environ, "KUBE_APISERVER_EXTRA_ARGS": " ".join([
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit.path}", "--audit-log-maxsize=500",
            "--audit-log-maxbackup=1", "--audit-log-format=json", "--audit-log-mode=batch",
            "--audit-log-batch-max-wait=1s"])}
        log(f"starting the control plane in {self.state}")
        subprocess.run([str(CLUSTER_DIR / "up"), str(self.state)], check=True, capture_output=True, env=env,
                       timeout=600)
        self.cluster = Cluster(dir=self.state, bin=self.bins)
        self.api = ApiServer(self.cluster)
        self.control_plane = {p.name: int(p.read_text().strip()) for p in (self.state / "pids").iterdir()}
        self.cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        self.cluster.kubectl("wait", "--for=condition=Established", "crd/federatedidentities.fedid.dev",
                             "--timeout=60s")
        self.namespaces = {name: f"bench-{name}" for name in ("lat", "fid", "anchor", "raw", "unrelated", "rot")}
        for namespace in (OPERATOR_NAMESPACE, *self.namespaces.values()):
            self.cluster.kubectl("create", "namespace", namespace, check=False)
        (self.work / "fedid").mkdir()
        self.sa_kubeconfig = install_chart_service_account(self.cluster, OPERATOR_NAMESPACE, self.work / "fedid")
        self.extra = ["--leader-election-lease-name", LEASE, *self.args.fedid_arg]
        self.fedid = Fedid(cluster=self.cluster, binary=self.binary, workdir=self.work / "fedid", name="fedid-bench",
                           kubeconfig=self.sa_kubeconfig, extra_args=self.extra)
        self.start_fedid()
        self.rss.start()
        allowed = [self.namespaces[n] for n in ("lat", "fid")]
        self.issuer("bench", allowed)
        self.issuer("bench-rot", [self.namespaces["rot"]])

    def start_fedid(self) -> float:
        self.fedid.start()
        self.rss.pid = self.fedid.process.pid
        return self.fedid.ready_after_s

    def owned_identities(self) -> int:
        """The identities (with their Secrets) this run created before the memory and rotation
        scenarios: the throughput ones and, when the latency scenario ran, its samples."""
        ran = self.results["scenarios"]
        return (self.size["identities"] if "throughput" in ran else 0) + \
            (self.size["latency_samples"] if "latency" in ran else 0)

    def restart_fedid_with(self, flags: list[str]) -> None:
        """Restarts fedid with `flags` added to its usual arguments."""
        self.fedid.stop()
        self.fedid.extra_args = [*self.extra, *flags]
        self.start_fedid()

    def issuer(self, name: str, namespaces: list[str]) -> None:
        self.cluster.apply(json.dumps({
            "apiVersion": GROUP, "kind": "IdentityIssuer", "metadata": {"name": name},
            "spec": {"issuerURL": self.fedid.issuer_url(name), "signing": {"prepublishPeriod": "0s"},
                     "allowedNamespaces": {"names": namespaces},
                     "tokenLifetime": {"default": "1h", "maximum": "2h"}}}))
        self.cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{name}", "--timeout=120s")

    def meter(self) -> CpuMeter:
        pids = dict(self.control_plane)
        if self.fedid and self.fedid.process:
            pids["fedid"] = self.fedid.process.pid
        return CpuMeter(pids, "bench client", digits=2)

    def apiserver_metrics(self) -> str:
        return self.cluster.kubectl("get", "--raw", "/metrics").stdout

    def fedid_metrics(self) -> str:
        return self.fedid.get("/metrics").text

    def identity(self, namespace: str, name: str, issuer: str = "bench", lifetime: str = "1h") -> dict:
        return {"apiVersion": GROUP, "kind": "FederatedIdentity", "metadata": {"name": name, "namespace": namespace},
                "spec": {"issuerRef": issuer, "audiences": ["sts.example.com"], "lifetime": lifetime,
                         "claims": [{"name": "repository", "string": "acme/web"},
                                    {"name": "ref", "string": "refs/heads/main"}]}}

    def watch(self, path: str, params: dict[str, str], on_event: Callable[[str, dict, float], None]) -> Watch:
        """A watch from the list's resourceVersion, so that nothing created after this call is missed
        however late the stream's headers come."""
        listed = self.api.session().get(f"{self.api.server}{path}", params={**params, "limit": "1"}, timeout=30)
        listed.raise_for_status()
        watch = Watch(self.api, path, {**params, "resourceVersion": listed.json()["metadata"]["resourceVersion"]},
                      on_event)
        watch.start()
        watch.connected.wait(2)
        return watch

    def readiness(self, identities_path: str, secrets_path: str) -> Readiness:
        """A `Readiness` fed by watches of the identities at `identities_path` and the labelled
        Secrets at `secrets_path` (a namespace's, or the cluster's)."""
        tracker = Readiness()
        tracker.watches = [self.watch(identities_path, {}, tracker.on_identity),
                           self.watch(secrets_path, {"labelSelector": IDENTITY_LABEL}, tracker.on_secret)]
        return tracker

    def identities_path(self, namespace: str) -> str:
        return f"/apis/{GROUP}/namespaces/{namespace}/federatedidentities"

    def post_all(self, path_of: Callable[[int], str], body_of: Callable[[int], dict], count: int,
                 concurrency: int = 16) -> list[tuple[float, float, int]]:
        """POSTs `count` bodies from `concurrency` threads; per item (sent, answered, status)."""
        out: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * count

        def one(index: int) -> None:
            sent = time.time()
            try:
                status = self.api.post(path_of(index), body_of(index)).status_code
            except requests.RequestException:
                status = 0
            out[index] = (sent, time.time(), status)

        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(count)))
        return out

    def unrelated_secrets(self, namespaces: list[str], count: int, size: int) -> dict:
        """Creates `count` unlabelled Secrets `u-<n>` with `size` random bytes (base64) of data,
        spread over `namespaces`; how many were created and how fast."""
        body = base64.b64encode(os.urandom(size)).decode()
        began = time.time()
        created = self.post_all(lambda n: f"/api/v1/namespaces/{namespaces[n % len(namespaces)]}/secrets",
                                lambda n: {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"u-{n}"},
                                           "data": {"blob": body}}, count)
        return {"secrets": count, "ok": sum(1 for c in created if c[2] == 201),
                "per_s": rate(count, time.time() - began)}

    # Scenarios.

    def serving(self) -> dict:
        seconds, rounds = self.size["wrk_seconds"], self.size["wrk_rounds"]
        discovery_url = f"{self.fedid.issuer_url('bench')}/.well-known/openid-configuration"
        discovery = self.fedid.get(discovery_url.removeprefix(self.fedid.base_url))
        jwks_path = discovery.json()["jwks_uri"].split("127.0.0.1", 1)[1].split("/", 1)[1]
        jwks = self.fedid.get("/" + jwks_path)
        discovery_path = discovery_url.removeprefix(self.fedid.base_url)
        headers = {name: value for name, value in jwks.headers.items() if name.lower() in ("cache-control",)}
        nginx = Nginx(self.work, self.fedid.cert, self.fedid.key, headers)
        nginx.put(discovery_path, discovery.content)
        nginx.put("/" + jwks_path, jwks.content)
        # A standby replica (same Lease) serving plain HTTP, beside the TLS leader.
        (self.work / "fedid-plain").mkdir()
        plain = Fedid(cluster=self.cluster, binary=self.binary, workdir=self.work / "fedid-plain", name="fedid-plain",
                      kubeconfig=self.sa_kubeconfig, extra_args=self.extra)
        plain.plain = True
        result: dict = {"jwks_bytes": len(jwks.content), "discovery_bytes": len(discovery.content),
                        "seconds_per_run": seconds, "rounds": rounds, "connections": 64, "wrk_threads": 2}
        try:
            plain.start()
            bounded_wait("the plain replica's JWKS", lambda: plain.get("/" + jwks_path).content == jwks.content, 60)
            nginx.start()
            result["tls_fedid"] = tls_parameters(self.fedid.port)
            result["tls_nginx"] = tls_parameters(nginx.tls_port)
            cases = {
                "jwks plain": (f"{plain.base_url}/{jwks_path}", f"http://127.0.0.1:{nginx.plain_port}/{jwks_path}"),
                "jwks tls": (f"{self.fedid.base_url}/{jwks_path}", f"https://127.0.0.1:{nginx.tls_port}/{jwks_path}"),
                "discovery tls": (f"{self.fedid.base_url}{discovery_path}",
                                  f"https://127.0.0.1:{nginx.tls_port}{discovery_path}"),
            }
            pids = {"fedid": self.fedid.process.pid, "fedid-plain": plain.process.pid,
                    **{f"nginx worker {n}": pid for n, pid in enumerate(children(nginx.process.pid))}}
            for name, (fedid_url, nginx_url) in cases.items():
                runs: dict[str, list[dict]] = {"fedid": [], "nginx": []}
                for _ in range(rounds):
                    for side, url in (("fedid", fedid_url), ("nginx", nginx_url)):
                        meter = CpuMeter(pids, "wrk (not counted)", digits=2)
                        meter.start()
                        outcome = wrk(url, seconds)
                        outcome["cpu_s"] = meter.stop()
                        served = sum(v for k, v in outcome["cpu_s"].items() if k.startswith(side))
                        outcome["server_cpu_us_per_request"] = (round(1e6 * served / (outcome["rps"] * seconds), 2)
                                                                if outcome["rps"] else None)
                        outcome["load"] = load()
                        runs[side].append(outcome)
                summary = {}
                for side, outcomes in runs.items():
                    good = [o for o in outcomes if o["rps"]]
                    summary[side] = {
                        "rps": round(sum(o["rps"] for o in good) / len(good), 1) if good else None,
                        "p50_ms": max((o["p50_ms"] or 0) for o in outcomes),
                        "p99_ms": max((o["p99_ms"] or 0) for o in outcomes),
                        "non_2xx": sum(o["non_2xx"] for o in outcomes),
                        "runs": [{k: v for k, v in o.items() if k != "raw"} for o in outcomes],
                        "wrk_output_last": outcomes[-1]["raw"],
                    }
                summary["ratio"] = (round(summary["fedid"]["rps"] / summary["nginx"]["rps"], 2)
                                    if summary["fedid"]["rps"] and summary["nginx"]["rps"] else None)
                result[name] = summary
                log(f"serving {name}: fedid {summary['fedid']['rps']}/s p99 {summary['fedid']['p99_ms']} ms, "
                    f"nginx {summary['nginx']['rps']}/s p99 {summary['nginx']['p99_ms']} ms")
        finally:
            nginx.stop()
            plain.stop()
        return result

    def latency(self) -> dict:
        namespace = self.namespaces["lat"]
        seen: dict[str, float] = {}
        lock = threading.Lock()

        def on_secret(kind: str, obj: dict, at: float) -> None:
            if kind == "ADDED":
                with lock:
                    seen.setdefault(obj["metadata"]["name"], time.time())

        watch = self.watch(f"/api/v1/namespaces/{namespace}/secrets", {"labelSelector": IDENTITY_LABEL}, on_secret)
        before = self.fedid_metrics()
        delays, missing = [], 0
        try:
            for n in range(self.size["latency_samples"]):
                name = f"lat-{n}"
                response = self.api.post(self.identities_path(namespace), self.identity(namespace, name))
                answered = time.time()
                if response.status_code != 201:
                    raise RuntimeError(f"identity create: {response.status_code} {response.text[:200]}")
                try:
                    bounded_wait(f"Secret {name}-token", lambda: f"{name}-token" in seen, 30, 0.005)
                    delays.append(seen[f"{name}-token"] - answered)
                except TimeoutError:
                    missing += 1
                time.sleep(0.2)
        finally:
            stop_watch(watch)
        after = self.fedid_metrics()
        self.idle_signing = signing_figures(before, after)
        return {"samples": len(delays), "missing": missing, "create_to_secret_ms": percentiles(delays),
                "raw_s": [round(d, 4) for d in delays], "load": load()}

    def throughput(self) -> dict:
        namespace, count = self.namespaces["fid"], self.size["identities"]
        tracker = self.readiness(self.identities_path(namespace), f"/api/v1/namespaces/{namespace}/secrets")
        api_before, fedid_before = self.apiserver_metrics(), self.fedid_metrics()
        meter = self.meter()
        self.rss.phase = "throughput"
        log(f"throughput: creating {count} identities at concurrency 16")
        meter.start()
        began = time.time()
        created = self.post_all(lambda _: self.identities_path(namespace),
                                lambda n: self.identity(namespace, f"id-{n}"), count)
        created_by = time.time()
        names = [f"id-{n}" for n in range(count)]
        try:
            bounded_wait("every identity Ready with its Secret", lambda: tracker.all_done(names),
                         max(180, count / 5), 0.2)
        except TimeoutError as error:
            log(str(error))
        done = time.time()
        cpu = meter.stop()
        log("throughput: all Ready; reading metrics")
        api_after, fedid_after = self.apiserver_metrics(), self.fedid_metrics()
        tracker.stop()
        log("throughput: watches stopped")
        finished_at = tracker.finished(names)
        finished = list(finished_at.values())
        delays = [finished_at[n] - created[i][1] for i, n in enumerate(names) if n in finished_at]
        last = max(finished) if finished else done
        writes = self.audit.between(began - 0.5, last + 0.5)
        log("throughput: audit read")
        identity_writes = {k: v for k, v in writes["by_verb_resource"].items() if not k.endswith(" leases")}
        result = {
            "identities": count, "created_ok": sum(1 for c in created if c[2] == 201),
            "ready_with_secret": len(finished),
            "create_seconds": round(created_by - began, 2),
            "all_ready_after_s": round(last - began, 2),
            "ready_per_s": rate(len(finished), last - began),
            "create_to_ready_ms": percentiles(delays),
            "fedid_writes_per_identity": round(writes["writes"] / max(count, 1), 3),
            "fedid_writes_by_verb_resource_per_identity": {k: round(v / max(count, 1), 3)
                                                          for k, v in identity_writes.items()},
            "fedid_failed_writes": writes["failed"],
            "apiserver_requests_per_identity": counts_delta(request_counts(api_before), request_counts(api_after),
                                                            per=count),
            "fedid_reconciles": metric_delta(fedid_before, fedid_after, "fedid_reconciles_total", "controller"),
            "cpu_s": cpu, "cpu_ms_per_identity": {k: round(1000 * v / max(count, 1), 2) for k, v in cpu.items()},
            "cores_busy": round(sum(cpu.values()) / max(done - began, 1e-9), 2),
            "signing": signing_figures(fedid_before, fedid_after),
            "rss_peak_mib": self.rss.peak_mib("throughput"), "load": load(),
            "raw_create_to_ready_s": [round(d, 4) for d in delays],
        }
        # One real Secret and status, for the anchor to write the same bytes.
        sample = json.loads(self.cluster.kubectl("get", "secret", "id-0-token", "-n", namespace, "-o",
                                                 "json").stdout)
        status = json.loads(self.cluster.kubectl("get", "fid", "id-0", "-n", namespace, "-o", "json").stdout)
        self.sample_secret, self.sample_status = sample, status.get("status") or {}
        return result

    def steady(self) -> dict:
        seconds = self.size["steady_s"]
        self.rss.phase = "steady"
        log(f"steady state: {seconds} s with nothing due")
        api_before, fedid_before = self.apiserver_metrics(), self.fedid_metrics()
        meter = self.meter()
        meter.start()
        began = time.time()
        time.sleep(seconds)
        ended = time.time()
        cpu = meter.stop()
        api_after, fedid_after = self.apiserver_metrics(), self.fedid_metrics()
        writes = self.audit.between(began, ended)
        api_writes = {k: v for k, v in counts_delta(request_counts(api_before), request_counts(api_after)).items()
                      if k.split(" ", 1)[0] in ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")}
        return {"seconds": seconds, "fedid_writes": writes["writes"], "fedid_lease_writes": writes["lease_writes"],
                "fedid_writes_by_verb_resource": writes["by_verb_resource"],
                "apiserver_write_requests_all_clients": api_writes,
                "fedid_reconciles": metric_delta(fedid_before, fedid_after, "fedid_reconciles_total", "controller"),
                "fedid_cpu_cores": round(cpu.get("fedid", 0) / seconds, 4), "cpu_s": cpu,
                "rss_mib": round(rss_kib(self.fedid.process.pid)["VmRSS"] / 1024, 1), "load": load()}

    def anchor(self) -> dict:
        """fedid stopped: the same minimum writes per identity from a plain client, then raw Secrets."""
        count = self.size["identities"]
        namespace = self.namespaces["anchor"]
        self.rss.phase = "stopped"
        self.fedid.stop()
        self.rss.pid = None
        data = self.sample_secret["data"]
        status = self.sample_status
        labels = self.sample_secret["metadata"].get("labels") or {}
        annotations = self.sample_secret["metadata"].get("annotations") or {}
        session_local = threading.local()

        def session() -> requests.Session:
            if not hasattr(session_local, "s"):
                session_local.s = self.api.new_session()
            return session_local.s

        def one(index: int) -> tuple[float, float, list[int]]:
            name = f"an-{index}"
            started = time.time()
            codes = []
            s = session()
            created = s.post(f"{self.api.server}{self.identities_path(namespace)}",
                             json=self.identity(namespace, name), timeout=60)
            codes.append(created.status_code)
            if created.status_code == 201:
                uid = created.json()["metadata"]["uid"]
                secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data,
                          "metadata": {"name": f"{name}-token", "namespace": namespace,
                                       "labels": {**labels, IDENTITY_LABEL: name}, "annotations": annotations,
                                       "ownerReferences": [{"apiVersion": GROUP, "kind": "FederatedIdentity",
                                                            "name": name, "uid": uid, "controller": True,
                                                            "blockOwnerDeletion": True}]}}
                codes.append(s.post(f"{self.api.server}/api/v1/namespaces/{namespace}/secrets", json=secret,
                                    timeout=60).status_code)
                codes.append(s.patch(f"{self.api.server}{self.identities_path(namespace)}/{name}/status",
                                     data=json.dumps({"status": {**status, "secretName": f"{name}-token"}}),
                                     headers={"Content-Type": "application/merge-patch+json"},
                                     timeout=60).status_code)
            return started, time.time(), codes

        log(f"anchor: {count} identities by a plain client (fedid stopped)")
        api_before = self.apiserver_metrics()
        meter = self.meter()
        meter.start()
        began = time.time()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(one, range(count)))
        ended = time.time()
        cpu = meter.stop()
        api_after = self.apiserver_metrics()
        ok = sum(1 for _, _, codes in outcomes if codes == [201, 201, 200])
        plain = {"identities": count, "ok": ok, "seconds": round(ended - began, 2),
                 "identities_per_s": rate(ok, ended - began),
                 "per_identity_ms": percentiles([b - a for a, b, _ in outcomes]),
                 "codes": dict(collections.Counter(str(c) for _, _, c in outcomes)),
                 "apiserver_requests_per_identity": counts_delta(request_counts(api_before),
                                                                 request_counts(api_after), per=count),
                 "cpu_s": cpu, "cpu_ms_per_identity": {k: round(1000 * v / max(count, 1), 2) for k, v in cpu.items()},
                 "load": load()}
        log(f"anchor: raw Secret creates ({count})")
        raw_ns = self.namespaces["raw"]
        meter.start()
        began = time.time()
        created = self.post_all(lambda _: f"/api/v1/namespaces/{raw_ns}/secrets",
                                lambda n: {"apiVersion": "v1", "kind": "Secret",
                                           "metadata": {"name": f"raw-{n}"}, "data": data}, count)
        ended = time.time()
        raw_cpu = meter.stop()
        ok_raw = sum(1 for c in created if c[2] == 201)
        raw = {"secrets": count, "ok": ok_raw, "seconds": round(ended - began, 2), "per_s": rate(ok_raw, ended - began),
               "cpu_s": raw_cpu, "load": load()}
        # The anchor's identities would be rewritten by fedid (their tokens are copies): remove them.
        self.cluster.kubectl("delete", "namespace", namespace, "--wait=false")
        try:
            bounded_wait("the anchor's namespace to be gone", lambda: self.cluster.kubectl(
                "get", "namespace", namespace, check=False).returncode != 0, 600, 1)
            removed = True
        except TimeoutError:
            removed = False
        return {"plain_client": plain, "raw_secrets": raw, "anchor_namespace_removed": removed}

    def memory_and_restart(self) -> dict:
        count = self.size["unrelated"]
        namespace = self.namespaces["unrelated"]
        log(f"memory: {count} unrelated 1 KB Secrets (fedid stopped)")
        unrelated = self.unrelated_secrets([namespace], count, 768)  # 1 KB of data per Secret
        log("restart: fedid started again")
        self.rss.phase = "restart"
        meter = self.meter()
        started = time.time()
        ready_after = self.start_fedid()
        meter = self.meter()  # the new fedid's pid
        meter.start()
        settle = self.size["settle_s"]
        time.sleep(settle)
        ended = time.time()
        cpu = meter.stop()
        writes = self.audit.between(started, ended)
        memory = rss_kib(self.fedid.process.pid)
        self.rss.phase = "memory (settled)"
        return {"unrelated_secrets": unrelated,
                "restart": {"readyz_after_s": ready_after, "settle_s": settle, "fedid_writes": writes["writes"],
                            "fedid_lease_writes": writes["lease_writes"],
                            "fedid_writes_by_verb_resource": writes["by_verb_resource"],
                            "fedid_cpu_s_while_settling": cpu.get("fedid"), "load": load()},
                "memory": {"rss_mib_after_settle": round(memory["VmRSS"] / 1024, 1),
                           "peak_mib_since_restart": round(memory["VmHWM"] / 1024, 1),
                           "owned_identities": self.owned_identities(),
                           "unrelated_secrets": count + self.size["identities"]}}

    def rotation(self) -> dict:
        result: dict = {}
        # 1. A rotation with nothing due: what re-reconciling the issuer's identities costs.
        before_key = self.issuer_status("bench").get("activeKeyID")
        fedid_before = self.fedid_metrics()
        meter = self.meter()
        meter.start()
        began = time.time()
        self.cluster.kubectl("annotate", "identityissuer", "bench", "--overwrite", f"fedid.dev/rotate-keys={began}")
        bounded_wait("the new active key", lambda: self.issuer_status("bench").get("activeKeyID") != before_key, 60)

        def reconciles() -> float:
            return metric_delta(fedid_before, self.fedid_metrics(), "fedid_reconciles_total", "controller").get(
                "identity", 0)

        last, stable_since = -1.0, time.monotonic()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            now_count = reconciles()
            if now_count != last:
                last, stable_since = now_count, time.monotonic()
            elif time.monotonic() - stable_since > 3:
                break
            time.sleep(0.5)
        ended = time.time()
        cpu = meter.stop()
        writes = self.audit.between(began, ended)
        result["nothing_due"] = {"identities": self.owned_identities(),
                                 "identity_reconciles": last, "seconds_until_quiet": round(ended - began - 3, 1),
                                 "fedid_writes": writes["writes"], "fedid_writes_by_verb_resource":
                                     writes["by_verb_resource"], "fedid_cpu_s": cpu.get("fedid"), "load": load()}
        # 2. R identities whose renewals come due after a rotation.
        namespace, count = self.namespaces["rot"], self.size["rotation_identities"]
        measured = self.results["scenarios"].get("throughput", {}).get("ready_per_s") or 50
        lifetime = int(max(45, math.ceil(2.2 * count / measured)))
        kids: dict[str, str] = {}
        changed_at: dict[str, float] = {}
        lock = threading.Lock()

        def on_secret(kind: str, obj: dict, at: float) -> None:
            token = base64.b64decode((obj.get("data") or {}).get("token", "")).decode(errors="replace")
            try:
                header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==="))
            except ValueError:
                return
            with lock:
                name = obj["metadata"]["name"]
                if kids.get(name) != header.get("kid"):
                    kids[name] = header.get("kid")
                    changed_at[name] = time.time()

        # Under a client-side budget (--kube-api-qps) when this build has one: fedid restarted with it.
        # The budget must cover the renewals it is to spread: each identity writes about 2.7 times
        # every two thirds of a lifetime. Below that (100/s for 10,000 identities of 209 s, in one
        # run) fedid falls behind for good and tokens lapse.
        qps = max(25, math.ceil(2 * 2.7 * count / lifetime))
        budget = (qps, qps)
        budget_flags = ["--kube-api-qps", str(budget[0]), "--kube-api-burst", str(budget[1])] \
            if "kube-api-qps" in self.api_rate_flags else []
        if budget_flags:
            self.restart_fedid_with(budget_flags)
        watch = self.watch(f"/api/v1/namespaces/{namespace}/secrets", {"labelSelector": IDENTITY_LABEL}, on_secret)
        log(f"rotation: {count} identities of issuer bench-rot, lifetime {lifetime}s, flags {budget_flags}")
        self.post_all(lambda _: self.identities_path(namespace),
                      lambda n: self.identity(namespace, f"rot-{n}", "bench-rot", f"{lifetime}s"), count)
        names = [f"rot-{n}-token" for n in range(count)]
        old_key = self.issuer_status("bench-rot").get("activeKeyID")
        try:
            bounded_wait("every rotation identity's Secret", lambda: all(n in kids for n in names),
                         max(180, count / 5), 0.2)
            began = time.time()
            self.cluster.kubectl("annotate", "identityissuer", "bench-rot", "--overwrite",
                                 f"fedid.dev/rotate-keys={began}")
            new_key = bounded_wait("bench-rot's new active key", lambda: (lambda k: k if k != old_key else None)(
                self.issuer_status("bench-rot").get("activeKeyID")), 60)
            bounded_wait("every identity signing with the new key",
                         lambda: all(kids.get(n) == new_key for n in names), lifetime * 1.5 + 120, 0.5)
            done = max(changed_at[n] for n in names)
            complete = True
        except TimeoutError as error:
            log(str(error))
            done, complete = time.time(), False
            new_key = self.issuer_status("bench-rot").get("activeKeyID")
        stop_watch(watch)
        writes = self.audit.between(began, done + 0.5)
        if budget_flags:
            self.restart_fedid_with([])
        with lock:
            on_new = sum(1 for n in names if kids.get(n) == new_key)
        result["renewals_due"] = {
            "identities": count, "lifetime_s": lifetime, "complete": complete, "signing_with_new_key": on_new,
            "seconds_until_all_new_key": round(done - began, 1),
            "fedid_writes": writes["writes"], "fedid_writes_per_identity": round(writes["writes"] / max(count, 1), 2),
            "fedid_writes_by_verb_resource": writes["by_verb_resource"],
            "busiest_second_writes": writes["busiest_second"], "writes_per_second": writes["per_second"],
            "client_rate_flags": self.api_rate_flags,
            "budget": {"qps": budget[0], "burst": budget[1]} if budget_flags else None,
            "within_budget": writes["busiest_second"] <= budget[0] + budget[1] if budget_flags else None,
            "load": load()}
        return result

    def scope(self) -> dict:
        """What watching every namespace costs beside watching only those with identities: K
        namespaces of identities of issuer bench-scope, unrelated Secrets in M others; fedid
        started cold, one mode at a time on the same objects (the setup's fedid stopped), cluster-
        wide as the chart's ServiceAccount and with --watch-namespaces as a second release's
        (watchNamespaces, namespaced rights), the modes interleaved round by round."""
        count, rounds = self.size["scope_identities"], self.size["scope_rounds"]
        inside = [f"bench-scope-{n}" for n in range(self.size["scope_namespaces"])]
        outside = [f"bench-scope-other-{n}" for n in range(self.size["scope_other_namespaces"])]
        unrelated, size = self.size["scope_unrelated"], self.size["scope_secret_bytes"]
        for namespace in (*inside, *outside):
            self.cluster.kubectl("create", "namespace", namespace, check=False)
        if self.fedid.process is None:
            self.start_fedid()  # the issuer's key ring is made by a running fedid
        self.issuer("bench-scope", inside)
        log(f"scope: {unrelated} unrelated Secrets of {size} B in {len(outside)} namespaces")
        unrelated_figures = self.unrelated_secrets(outside, unrelated, size)
        (self.work / SCOPED_RELEASE).mkdir(exist_ok=True)
        scoped_kubeconfig = install_chart_service_account(
            self.cluster, OPERATOR_NAMESPACE, self.work / SCOPED_RELEASE, release=SCOPED_RELEASE,
            values=(f"watchNamespaces={{{','.join(inside)}}}",))
        modes = {"cluster-wide": (self.sa_kubeconfig, SA_USER, []),
                 "namespaced": (scoped_kubeconfig, SCOPED_USER, ["--watch-namespaces", ",".join(inside)])}
        self.fedid.stop()
        self.rss.pid = None
        runs: dict[str, list[dict]] = {mode: [] for mode in modes}
        try:
            rights = {mode: self.rights(kubeconfig, inside, outside) for mode, (kubeconfig, _, _) in modes.items()}
            operators = {}
            for mode, (kubeconfig, _, _) in modes.items():
                (self.work / f"scope-{mode}").mkdir(exist_ok=True)
                operators[mode] = Fedid(cluster=self.cluster, binary=self.binary, workdir=self.work / f"scope-{mode}",
                                        name=f"fedid-scope-{mode}", kubeconfig=kubeconfig, port=self.fedid.port)
            for round_number in range(1, rounds + 1):
                # The modes take turns going first, so that neither always meets a fresher apiserver.
                for mode in (list(modes) if round_number % 2 else list(reversed(modes))):
                    _, user, flags = modes[mode]
                    log(f"scope: round {round_number}/{rounds}, {mode}: {count} identities in {len(inside)} "
                        "namespaces, fedid started cold")
                    lease = ["--leader-election-lease-name", f"{LEASE}-scope-{mode}-{round_number}"]
                    figures = self.scope_run(operators[mode], user, [*lease, *flags], inside, count, f"scope {mode}")
                    runs[mode].append({"round": round_number, **figures})
                    log(f"scope: {mode}: all Ready after {figures['all_ready_after_s']} s, RSS "
                        f"{figures['rss_mib_after_settle']} MiB, fedid CPU {figures['fedid_cpu_s']} s, "
                        f"{figures['list_requests']} lists, {figures['watch_requests']} watches, "
                        f"{figures['writes']} writes, {figures['log_forbidden_lines']} log lines with 'forbidden'")
        finally:
            self.start_fedid()
            self.cluster.kubectl("delete", "namespace", *inside, *outside, "--wait=false", check=False)

        def median(mode: str, key: str) -> float | None:
            values = [run[key] for run in runs[mode] if run.get(key) is not None]
            return round(statistics.median(values), 3) if values else None

        compared = ("all_ready_after_s", "readyz_after_s", "rss_mib_after_settle", "rss_peak_mib",
                    "fedid_cpu_s_to_ready", "fedid_cpu_s", "apiserver_cpu_s", "list_requests", "watch_requests",
                    "list_watch_requests", "writes")
        keys = (*compared, "refused_requests", "log_forbidden_lines")
        summary = {mode: {key: median(mode, key) for key in keys} for mode in modes}
        return {"sizes": {"namespaces": len(inside), "identities": count, "other_namespaces": len(outside),
                          "unrelated_secrets": unrelated, "unrelated_secret_bytes": size, "rounds": rounds,
                          "settle_s": self.size["settle_s"]},
                "watch_namespaces": inside, "unrelated": unrelated_figures, "rights": rights,
                **{mode: {**summary[mode], "complete": all(run["complete"] for run in runs[mode])} for mode in modes},
                "ratios_namespaced_to_cluster_wide": {key: ratio(summary["namespaced"][key],
                                                                 summary["cluster-wide"][key]) for key in compared},
                "runs": runs,
                "note": "medians over the rounds; each run from fedid's spawn: the identities are created afresh "
                        "before it with no fedid running and deleted after it, so both modes start cold on the same "
                        "objects", "load": load()}

    def scope_run(self, fedid: Fedid, user: str, flags: list[str], namespaces: list[str], count: int,
                  phase: str) -> dict:
        """One cold start of `fedid` (as `user`, with `flags`): `count` identities created afresh
        across `namespaces` while no fedid runs, so that they have neither status nor Secret
        (deleting only their Secrets would leave the previous run's Ready conditions, and a warm
        apiserver either way); from spawn until every one is Ready with its Secret, then settle_s
        with nothing due. The identities and their Secrets are deleted again at the end."""
        created = self.post_all(lambda n: self.identities_path(namespaces[n % len(namespaces)]),
                                lambda n: self.identity(namespaces[n % len(namespaces)], f"sc-{n}", "bench-scope"),
                                count)
        names = [f"sc-{n}" for n in range(count)]
        tracker = self.readiness(f"/apis/{GROUP}/federatedidentities", "/api/v1/secrets")
        fedid.extra_args = [*flags, *self.args.fedid_arg]
        meter = self.meter()  # the control plane: the setup's fedid is stopped
        self.rss.phase = phase
        try:
            meter.start()
            spawned = time.time()
            fedid.start()
            self.rss.pid = fedid.process.pid
            try:
                bounded_wait("every scope identity Ready with its Secret", lambda: tracker.all_done(names),
                             max(180, count / 5), 0.2)
            except TimeoutError as error:
                log(str(error))
            cpu_to_ready = cpu_seconds(fedid.process.pid)
            finished = tracker.finished(names)
            time.sleep(self.size["settle_s"])
            memory = rss_kib(fedid.process.pid)
            cpu = cpu_seconds(fedid.process.pid)
            ended = time.time()
            control_plane = meter.stop()
        finally:
            tracker.stop()
            self.rss.pid = None
            fedid.stop()
            removed = self.remove_identities(namespaces)
        reads = self.audit.between(spawned - 0.5, ended, user, READ_VERBS)
        writes = self.audit.between(spawned - 0.5, ended, user)
        by_verb = collections.Counter()
        for key, value in reads["by_verb_resource"].items():
            by_verb[key.split(" ", 1)[0]] += value
        forbidden = [line for line in fedid.log_path.read_text(errors="replace").splitlines()
                     if "forbidden" in line.lower()]
        complete = len(finished) == count
        return {"identities": count, "created_ok": sum(1 for c in created if c[2] == 201),
                "ready_with_secret": len(finished), "complete": complete,
                "readyz_after_s": fedid.ready_after_s,
                "all_ready_after_s": round(max(finished.values()) - spawned, 2) if complete else None,
                "fedid_cpu_s_to_ready": round(cpu_to_ready, 2), "fedid_cpu_s": round(cpu, 2),
                "apiserver_cpu_s": control_plane.get("kube-apiserver"), "control_plane_cpu_s": control_plane,
                "rss_mib_after_settle": round(memory["VmRSS"] / 1024, 1),
                "rss_peak_mib": round(memory["VmHWM"] / 1024, 1),
                "list_requests": by_verb["list"], "watch_requests": by_verb["watch"],
                "list_watch_requests": by_verb["list"] + by_verb["watch"],
                "requests_by_verb_resource": reads["by_verb_resource"],
                "refused_requests": reads["failed"] + writes["failed"],
                "refused_by_verb_resource": {**reads["failed_by_verb_resource"], **writes["failed_by_verb_resource"]},
                "writes": writes["writes"], "lease_writes": writes["lease_writes"],
                "writes_by_verb_resource": writes["by_verb_resource"],
                "log_forbidden_lines": len(forbidden), "log_forbidden_first": [line[:300] for line in forbidden[:3]],
                "log": str(fedid.log_path), "removed_after": removed, "load": load()}

    def remove_identities(self, namespaces: list[str]) -> bool:
        """Deletes every identity in `namespaces` and their token Secrets (directly: the garbage
        collector would take minutes at its client rate); whether none is left within 5 minutes."""
        session = self.api.session()
        kinds = [(self.identities_path(namespace), {}) for namespace in namespaces] + \
            [(f"/api/v1/namespaces/{namespace}/secrets", {"labelSelector": IDENTITY_LABEL}) for namespace in namespaces]
        for path, params in kinds:
            session.delete(f"{self.api.server}{path}", params=params, timeout=120).raise_for_status()

        def gone() -> bool:
            for path, params in kinds:
                listed = session.get(f"{self.api.server}{path}", params={**params, "limit": "1"}, timeout=30)
                listed.raise_for_status()
                if listed.json()["items"]:
                    return False
            return True

        try:
            bounded_wait("the scope identities and their Secrets to be gone", gone, 300, 1)
            return True
        except TimeoutError:
            return False

    def secrets_visible(self, kubeconfig: Path, namespace: str | None = None) -> dict:
        """What `kubectl get secrets` (in `namespace`, else -A) gives the holder of `kubeconfig`:
        how many Secrets and bytes of data, or the refusal. Counted only: no data is kept or printed."""
        result = self.cluster.kubectl("--kubeconfig", str(kubeconfig), "get", "secrets",
                                      *(["-n", namespace] if namespace else ["-A"]), "-o", "json", check=False)
        if result.returncode != 0:
            message = (result.stderr.strip().splitlines() or ["?"])[-1][:300]
            return {"forbidden": "forbidden" in message.lower(), "error": message}
        items = json.loads(result.stdout)["items"]
        return {"forbidden": False, "secrets": len(items),
                "data_bytes": sum(len(base64.b64decode(value)) for item in items
                                  for value in (item.get("data") or {}).values())}

    def rights(self, kubeconfig: Path, inside: list[str], outside: list[str]) -> dict:
        """The Secrets a ServiceAccount can read, checked as a sceptic would: `kubectl get secrets
        -A` as it, then namespace by namespace, those fedid serves (`inside`) and the others."""

        def summed(namespaces: list[str]) -> dict:
            each = [self.secrets_visible(kubeconfig, namespace) for namespace in namespaces]
            return {"namespaces": len(each), "forbidden_in": sum(1 for e in each if e["forbidden"]),
                    "other_errors": sum(1 for e in each if "error" in e and not e["forbidden"]),
                    "secrets": sum(e.get("secrets", 0) for e in each),
                    "data_bytes": sum(e.get("data_bytes", 0) for e in each)}

        return {"all_namespaces": self.secrets_visible(kubeconfig), "scope_namespaces": summed(inside),
                "unrelated_namespaces": summed(outside)}

    def issuer_status(self, name: str) -> dict:
        return json.loads(self.cluster.kubectl("get", "identityissuer", name, "-o", "json").stdout).get("status") or {}

    def signing(self) -> dict:
        """fedid's mint path against raw aws-lc-rs signatures, both on one thread of one process
        (`core/examples/signing.rs`, built with the fedid binary's profile), plus two references: the
        operator's own signing histogram while idle and `openssl speed rsa2048`."""
        release = "release" in self.binary.parts
        subprocess.run(["cargo", "build", "-q", *(["--release"] if release else []), "-p", "fedid-core",
                        "--example", "signing"], cwd=str(REPO), check=True, timeout=1800)
        example = REPO / "target" / ("release" if release else "debug") / "examples" / "signing"
        seconds = "1" if self.args.quick else "3"
        measured = {algorithm: json.loads(subprocess.run([str(example), algorithm, seconds], capture_output=True,
                                                         text=True, check=True, timeout=120).stdout)
                    for algorithm in ("RS256", "ES256")}
        out = subprocess.run(["openssl", "speed", "-seconds", "3", "rsa2048"], capture_output=True, text=True,
                             timeout=120).stdout
        match = re.search(r"^rsa\s+2048 bits\s+\S+\s+\S+\s+([\d.]+)", out, re.M)
        openssl = float(match.group(1)) if match else None
        idle = getattr(self, "idle_signing", {})
        rs256 = measured["RS256"]
        return {"fedid_mint_per_s": rs256["fedid_mint_per_s"], "raw_aws_lc_rs_sign_per_s": rs256["raw_sign_per_s"],
                "ratio": rs256["ratio"], "before_parse_per_token_per_s": rs256["parse_per_token_per_s"],
                "ratio_before": rs256["ratio_parse_per_token"], "es256": measured["ES256"],
                "profile": "release" if release else "debug",
                "fedid_idle_histogram": idle,
                "fedid_histogram_signatures_per_s": round(1 / idle["mean_s"], 1) if idle.get("mean_s") else None,
                "fedid_under_load": self.results["scenarios"].get("throughput", {}).get("signing"),
                "openssl_rsa2048_sign_per_s": openssl,
                "note": "fedid: mint() of a CI identity's token on one thread; anchor: raw aws-lc-rs RS256 over a "
                        "message of the same length with the key parsed once; before: jsonwebtoken::encode, which "
                        "parses the key per token (fedid's signer before it kept the parsed key)", "load": load()}

    def sub_bench(self, script: str, extra: list[str]) -> dict:
        out = self.work / f"{Path(script).stem}.json"
        command = [sys.executable, str(E2E / "bench" / script), *extra, "--out", str(out)]
        if script == "pods.py":
            command += ["--fedid-bin", str(self.binary)]
        log(f"running {' '.join(command[1:])}")
        started = time.time()
        finished = subprocess.run(command, capture_output=True, text=True, cwd=str(REPO), timeout=3600,
                                  env={**os.environ, "FEDID_BIN": str(self.binary)})
        (self.work / f"{Path(script).stem}.log").write_text(finished.stdout + finished.stderr)
        if finished.returncode != 0 or not out.exists():
            raise RuntimeError(f"{script} exited {finished.returncode}: {(finished.stdout + finished.stderr)[-2000:]}")
        figures = json.loads(out.read_text())
        figures.pop("raw", None)
        figures["seconds"] = round(time.time() - started, 1)
        figures["load"] = load()
        return figures

    def stop(self) -> None:
        self.rss.stopped.set()
        if self.fedid is not None:
            self.fedid.stop()
        if getattr(self, "state", None) is not None and not self.args.keep_cluster:
            subprocess.run([str(CLUSTER_DIR / "down"), str(self.state)], check=False, capture_output=True, timeout=120)


def metric_delta(before: str, after: str, name: str, label: str) -> dict[str, float]:
    def by(text: str) -> dict[str, float]:
        out: dict[str, float] = collections.defaultdict(float)
        for labels, value in samples(text, name):
            out[labels.get(label, "?")] += value
        return out

    old, new = by(before), by(after)
    return {key: new[key] - old.get(key, 0.0) for key in new if new[key] - old.get(key, 0.0)}


def signing_figures(before: str, after: str) -> dict:
    def total(text: str, suffix: str) -> float:
        return sum(value for _, value in samples(text, f"fedid_signing_duration_seconds_{suffix}"))

    count = total(after, "count") - total(before, "count")
    seconds = total(after, "sum") - total(before, "sum")
    return {"signatures": int(count), "mean_s": seconds / count if count else None,
            "mean_ms": round(1000 * seconds / count, 3) if count else None}


# --- the table, the JSON and the plot --------------------------------------------------------------


def fmt(value: object, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        value = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{value}{unit}"


def table(results: dict) -> list[dict]:
    s = results["scenarios"]
    rows: list[dict] = []

    def row(scenario: str, fedid: str, anchor: str, ratio: float | None, goal: str, met: bool | None,
            load_avg: list | None = None) -> None:
        rows.append({"scenario": scenario, "fedid": fedid, "anchor": anchor,
                     "ratio": None if ratio is None else round(ratio, 2), "goal": goal,
                     "met": "n/a" if met is None else ("yes" if met else "NO"), "load": load_avg})

    t, a = s.get("throughput"), s.get("anchor")
    if t:
        anchor_rate = a and a["plain_client"]["identities_per_s"]
        raw_rate = a and a["raw_secrets"]["per_s"]
        ratio = t["ready_per_s"] / anchor_rate if t.get("ready_per_s") and anchor_rate else None
        row(f"identity -> Ready, {t['identities']} at c=16",
            f"{fmt(t['ready_per_s'])}/s, p50/p99 {fmt(t['create_to_ready_ms'].get('p50'))}/"
            f"{fmt(t['create_to_ready_ms'].get('p99'))} ms",
            f"plain client {fmt(anchor_rate)}/s; raw Secrets {fmt(raw_rate)}/s", ratio, ">= 0.8x",
            None if ratio is None else ratio >= 0.8, t["load"])
        by = t["fedid_writes_by_verb_resource_per_identity"]
        row("  writes per identity by fedid", f"{t['fedid_writes_per_identity']} ("
            + ", ".join(f"{k} {v}" for k, v in by.items()) + ")", "plain client 2", None, "<= 2",
            t["fedid_writes_per_identity"] <= 2.0, t["load"])
    lat = s.get("latency")
    if lat:
        p99 = lat["create_to_secret_ms"].get("p99")
        row(f"single identity, idle ({lat['samples']})", f"p50/p99 {fmt(lat['create_to_secret_ms'].get('p50'))}/"
            f"{fmt(p99)} ms", "-", None, "p99 <= 250 ms", None if p99 is None else p99 <= 250, lat["load"])
    st = s.get("steady")
    if st:
        row(f"steady state {st['seconds']} s", f"{st['fedid_writes']} writes (+{st['fedid_lease_writes']} Lease)",
            "0", None, "0 writes", st["fedid_writes"] == 0, st["load"])
    m = s.get("memory")
    if m:
        mem = m["memory"]
        row(f"memory: {mem['owned_identities']} ids + Secrets, {mem['unrelated_secrets']} unrelated",
            f"RSS {mem['rss_mib_after_settle']} MiB, peak {mem['peak_mib_since_restart']} MiB", "-", None,
            "<= 64 MiB steady", mem["rss_mib_after_settle"] <= 64, m["restart"]["load"])
        r = m["restart"]
        row("restart", f"/readyz {r['readyz_after_s']} s; {r['fedid_writes']} writes in {r['settle_s']} s "
            f"(+{r['fedid_lease_writes']} Lease)", "-", None, "0 writes", r["fedid_writes"] == 0, r["load"])
    sv = s.get("serving")
    if sv:
        for name in ("jwks plain", "jwks tls", "discovery tls"):
            case = sv.get(name)
            if not case:
                continue
            f, n = case["fedid"], case["nginx"]
            met = None if case["ratio"] is None else case["ratio"] >= 1.0 and (f["p99_ms"] or 99) <= 5
            row(f"serving {name}, 64 conns", f"{fmt(f['rps'])}/s p99 {fmt(f['p99_ms'])} ms",
                f"nginx {fmt(n['rps'])}/s p99 {fmt(n['p99_ms'])} ms", case["ratio"], ">= 1.0x, p99 <= 5 ms", met,
                f["runs"][-1]["load"])
    sg = s.get("signing")
    if sg:
        row("signing RS256 (one thread)", f"{fmt(sg['fedid_mint_per_s'])}/s mint (before: "
            f"{fmt(sg['before_parse_per_token_per_s'])}/s, {sg['ratio_before']}x)",
            f"raw aws-lc-rs {fmt(sg['raw_aws_lc_rs_sign_per_s'])}/s", sg["ratio"], ">= 0.8x",
            None if sg["ratio"] is None else sg["ratio"] >= 0.8, sg["load"])
    ro = s.get("rotation")
    if ro:
        nd = ro["nothing_due"]
        row(f"rotation, nothing due ({nd['identities']})", f"{nd['fedid_writes']} writes, "
            f"{fmt(nd['identity_reconciles'])} reconciles, fedid CPU {fmt(nd['fedid_cpu_s'])} s", "-", None,
            "no identity writes", None, nd["load"])
        rd = ro["renewals_due"]
        limit = rd.get("budget")
        anchor = f"--kube-api-qps {limit['qps']} --kube-api-burst {limit['burst']}" if limit else "no budget flag"
        row(f"rotation, renewals due ({rd['identities']})",
            f"all on new key after {rd['seconds_until_all_new_key']} s ({rd['signing_with_new_key']}/"
            f"{rd['identities']}); {rd['fedid_writes_per_identity']} writes/id; busiest second "
            f"{rd['busiest_second_writes']}", anchor, None, "busiest second <= qps + burst",
            rd.get("within_budget"), rd["load"])
    p = s.get("pods")
    if p:
        secrets = p.get("pod_secrets", {})
        p99 = secrets.get("create_to_secret_ms", {}).get("p99")
        row(f"pod create -> Secret at {secrets.get('target_rate_per_s')}/s",
            f"p99 {fmt(p99)} ms ({secrets.get('with_secret')}/{secrets.get('created')})", "-", None,
            "p99 <= 1000 ms", None if p99 is None else p99 <= 1000 and secrets.get("with_secret") ==
            secrets.get("created"), p.get("load"))
        hook = p.get("webhook", {}).get("apiserver_histogram", {})
        bucket = hook.get("p99_bucket_ms")
        row("pod webhook at the apiserver", f"p99 {fmt(hook.get('p99_ms'))} ms (bucket {bucket})", "-", None,
            "p99 <= 10 ms", None if not bucket else (bucket[1] is not None and bucket[1] <= 10), p.get("load"))
        pull = p.get("pull", {})
        sides = pull.get("sides", {})
        ratio = pull.get("ratio_fedid_to_apiserver")
        row("pull /v1/token vs TokenRequest", f"{fmt(sides.get('fedid /v1/token', {}).get('rate_per_s'))}/s",
            f"TokenRequest {fmt(sides.get('apiserver TokenRequest', {}).get('rate_per_s'))}/s", ratio, ">= 0.8x",
            None if ratio is None else ratio >= 0.8, p.get("load"))
    e = s.get("exchange")
    if e:
        ratio = e.get("ratio_fedid_to_anchor")
        row(f"exchange at MinIO ({e.get('identities')})", f"{fmt(e.get('fedid', {}).get('rate_at_peer_per_s'))}/s",
            f"direct client {fmt(e.get('anchor', {}).get('rate_at_peer_per_s'))}/s", ratio,
            ">= 0.8x", None if ratio is None else ratio >= 0.8, e.get("load"))
    sc = s.get("scope")
    if sc:
        z, wide, scoped = sc["sizes"], sc["cluster-wide"], sc["namespaced"]
        r = sc["ratios_namespaced_to_cluster_wide"]
        row(f"scope: {z['identities']} ids in {z['namespaces']} ns, cold start -> all Ready",
            f"--watch-namespaces {fmt(scoped['all_ready_after_s'])} s",
            f"cluster-wide {fmt(wide['all_ready_after_s'])} s", r["all_ready_after_s"], "-", None, sc["load"])
        row(f"  scope: RSS after {z['settle_s']} s settle", f"{fmt(scoped['rss_mib_after_settle'])} MiB",
            f"{fmt(wide['rss_mib_after_settle'])} MiB", r["rss_mib_after_settle"], "-", None, sc["load"])
        row("  scope: fedid CPU, spawn to end of settle", f"{fmt(scoped['fedid_cpu_s'])} s",
            f"{fmt(wide['fedid_cpu_s'])} s", r["fedid_cpu_s"], "-", None, sc["load"])
        row("  scope: apiserver CPU, same window", f"{fmt(scoped['apiserver_cpu_s'])} s",
            f"{fmt(wide['apiserver_cpu_s'])} s", r["apiserver_cpu_s"], "-", None, sc["load"])
        row("  scope: fedid's lists + watches (writes, refused)",
            *(f"{fmt(m['list_watch_requests'])} ({fmt(m['writes'])}, {fmt(m['refused_requests'])})"
              for m in (scoped, wide)), r["list_watch_requests"], "-", None, sc["load"])

        def readable(rights: dict) -> str:
            every, other = rights["all_namespaces"], rights["unrelated_namespaces"]
            listed = "Forbidden" if every["forbidden"] else every.get("error") or \
                f"{every['secrets']} Secrets, {every['data_bytes'] / 2**20:.1f} MiB"
            return f"get secrets -A: {listed}; unrelated ns: {other['secrets']} Secrets"

        scoped_rights = sc["rights"]["namespaced"]
        row("  scope: what fedid's ServiceAccount can read", readable(scoped_rights),
            readable(sc["rights"]["cluster-wide"]), None, "no Secret outside scope",
            scoped_rights["all_namespaces"]["forbidden"] and scoped_rights["unrelated_namespaces"]["secrets"] == 0
            and scoped_rights["unrelated_namespaces"]["forbidden_in"] == z["other_namespaces"], sc["load"])
    for name, error in results.get("errors", {}).items():
        row(f"{name}: ERROR", error.splitlines()[-1][:80] if error else "?", "-", None, "-", None)
    return rows


def print_table(rows: list[dict]) -> str:
    headers = ["scenario", "fedid", "anchor", "ratio", "goal", "met", "load"]
    cells = [[str(r[h]) if r[h] is not None else "" for h in headers] for r in rows]
    for line in cells:
        line[6] = "/".join(f"{v:.1f}" for v in rows[cells.index(line)]["load"]) if rows[cells.index(line)]["load"] \
            else ""
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def thinned(points: list, limit: int = 400) -> list:
    """At most about `limit` of `points`, evenly spaced, the last kept (a plot of 10,000 samples
    as text would be megabytes)."""
    step = max(1, len(points) // limit)
    return points[::step] + ([points[-1]] if points and (len(points) - 1) % step else [])


def plot(results: dict, raw: dict, path: Path) -> None:
    """The plot as SVG: text, so it is committed and shown in the README beside the table."""
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    matplotlib.rcParams["svg.hashsalt"] = "fedid-bench"
    import matplotlib.pyplot as plt

    s = results["scenarios"]
    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    figure.suptitle(f"fedid bench ({results['mode']}, {results['started']}, {results['machine']['cores']} cores, "
                    f"{results['machine']['memory_gib']} GiB, {results['machine']['git_commit'][:10]})")
    ax = axes[0][0]
    for label, values in (("create -> Ready (throughput)", raw.get("throughput")),
                          ("create -> Secret (idle, single)", raw.get("latency"))):
        if values:
            ordered = sorted(v * 1000 for v in values)
            cdf = thinned([(v, (i + 1) / len(ordered)) for i, v in enumerate(ordered)])
            ax.plot([v for v, _ in cdf], [f for _, f in cdf], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction")
    ax.set_title("latency distributions (CDF)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax = axes[0][1]
    names, fedid_rates, anchor_rates = [], [], []
    if s.get("throughput") and s.get("anchor"):
        names.append("identities/s\n(plain client)")
        fedid_rates.append(s["throughput"]["ready_per_s"] or 0)
        anchor_rates.append(s["anchor"]["plain_client"]["identities_per_s"] or 0)
    if s.get("signing") and s["signing"].get("raw_aws_lc_rs_sign_per_s"):
        names.append("RS256 signs/s, 1 thread\n(raw aws-lc-rs)")
        fedid_rates.append(s["signing"]["fedid_mint_per_s"] or 0)
        anchor_rates.append(s["signing"]["raw_aws_lc_rs_sign_per_s"])
    for case in ("jwks plain", "jwks tls", "discovery tls"):
        if s.get("serving", {}).get(case):
            names.append(f"{case} req/s\n(nginx)")
            fedid_rates.append(s["serving"][case]["fedid"]["rps"] or 0)
            anchor_rates.append(s["serving"][case]["nginx"]["rps"] or 0)
    if names:
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], fedid_rates, 0.4, label="fedid")
        ax.bar([i + 0.2 for i in x], anchor_rates, 0.4, label="anchor")
        ax.set_xticks(list(x), names, fontsize=8)
        ax.set_yscale("log")
        ax.set_title("rates: fedid beside its anchor (same run)")
        ax.legend()
    ax = axes[1][0]
    rotation = s.get("rotation", {}).get("renewals_due")
    if rotation and rotation["writes_per_second"]:
        start = rotation["writes_per_second"][0][0]
        ax.bar([t - start for t, _ in rotation["writes_per_second"]], [c for _, c in rotation["writes_per_second"]],
               1.0)
        ax.set_title(f"rotation: fedid writes per second ({rotation['identities']} identities, "
                     f"lifetime {rotation['lifetime_s']} s)")
        ax.set_xlabel("s after the rotation")
    ax = axes[1][1]
    rss = raw.get("rss") or []
    if rss:
        start = rss[0][0]
        for phase in dict.fromkeys(tag for _, tag, _ in rss):
            points = thinned([(t - start, kib / 1024) for t, tag, kib in rss if tag == phase], 150)
            ax.plot([p[0] for p in points], [p[1] for p in points], ".", markersize=2, label=phase)
        ax.axhline(64, color="red", linewidth=0.8, linestyle="--", label="64 MiB goal")
        ax.set_xlabel("s")
        ax.set_ylabel("MiB")
        ax.set_title("fedid RSS by phase")
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, format="svg", metadata={"Date": None})
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (CI smoke test; under 10 minutes)")
    parser.add_argument("--identities", type=int, help="identities of the throughput scenario")
    parser.add_argument("--unrelated", type=int, help="unrelated Secrets of the memory scenario")
    parser.add_argument("--rotation-identities", type=int)
    parser.add_argument("--steady-seconds", type=int)
    parser.add_argument("--only", default="", help="comma-separated scenarios to run (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated scenarios to skip")
    parser.add_argument("--fedid-bin", help="the fedid binary (default: $FEDID_BIN, else target/release/fedid)")
    parser.add_argument("--fedid-arg", action="append", default=[], help="an extra `fedid run` argument (repeatable)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--keep-cluster", action="store_true")
    args = parser.parse_args()

    bench = Bench(args)
    order = ["scope", "serving", "latency", "throughput", "steady", "anchor", "memory", "rotation", "signing", "pods",
             "exchange"]
    wanted = [name for name in order if (not args.only or name in args.only.split(","))
              and name not in args.skip.split(",")]
    raw: dict = {}
    began = time.monotonic()
    cluster_scenarios = {"scope", "serving", "latency", "throughput", "steady", "anchor", "memory", "rotation",
                         "signing"}
    try:
        if cluster_scenarios & set(wanted):
            bench.setup()
        for name in wanted:
            if name in ("anchor",) and "throughput" not in bench.results["scenarios"]:
                bench.results["errors"][name] = "needs the throughput scenario's Secret and status"
                continue
            log(f"--- {name} (load {load()})")
            bench.rss.phase = name
            try:
                if name == "scope":
                    bench.results["scenarios"]["scope"] = bench.scope()
                elif name == "serving":
                    bench.results["scenarios"]["serving"] = bench.serving()
                elif name == "latency":
                    figures = bench.latency()
                    raw["latency"] = figures.pop("raw_s")
                    bench.results["scenarios"]["latency"] = figures
                elif name == "throughput":
                    figures = bench.throughput()
                    raw["throughput"] = figures.pop("raw_create_to_ready_s")
                    bench.results["scenarios"]["throughput"] = figures
                elif name == "steady":
                    bench.results["scenarios"]["steady"] = bench.steady()
                elif name == "anchor":
                    bench.results["scenarios"]["anchor"] = bench.anchor()
                elif name == "memory":
                    if bench.fedid.process is None:
                        bench.results["scenarios"]["memory"] = bench.memory_and_restart()
                    else:
                        bench.fedid.stop()
                        bench.results["scenarios"]["memory"] = bench.memory_and_restart()
                elif name == "rotation":
                    bench.results["scenarios"]["rotation"] = bench.rotation()
                elif name == "signing":
                    bench.results["scenarios"]["signing"] = bench.signing()
                elif name == "pods":
                    if bench.fedid and bench.fedid.process:
                        bench.stop()  # one benchmark at a time: the sub-benchmarks start their own clusters
                        bench.fedid = None
                    bench.results["scenarios"]["pods"] = bench.sub_bench("pods.py", bench.size["pods_args"])
                elif name == "exchange":
                    if bench.fedid and bench.fedid.process:
                        bench.stop()
                        bench.fedid = None
                    bench.results["scenarios"]["exchange"] = bench.sub_bench("exchange_minio.py",
                                                                             bench.size["exchange_args"])
            except Exception:  # noqa: BLE001 - one scenario failing must not lose the others' figures
                bench.results["errors"][name] = traceback.format_exc()[-3000:]
                log(f"{name} failed:\n{bench.results['errors'][name]}")
                if bench.fedid is not None and bench.fedid.process is None and name in ("anchor", "memory"):
                    try:
                        bench.start_fedid()
                    except Exception:  # noqa: BLE001
                        pass
    finally:
        raw["rss"] = bench.rss.samples
        bench.stop()
    bench.results["seconds"] = round(time.monotonic() - began, 1)
    bench.results["load_average_at_end"] = load()
    bench.results["work_dir"] = str(bench.work)
    rows = table(bench.results)
    bench.results["table"] = rows
    print()
    text = print_table(rows)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = datetime.date.today().isoformat() + ("-quick" if args.quick else "")
    bench.results["table_text"] = text
    (args.results_dir / f"{stem}.json").write_text(json.dumps(bench.results, indent=2, default=str) + "\n")
    try:
        plot(bench.results, raw, args.results_dir / f"{stem}.svg")
    except Exception:  # noqa: BLE001 - the figures are written even when the plot fails
        traceback.print_exc()
    print(f"\nresults: {args.results_dir / (stem + '.json')}, plot: {args.results_dir / (stem + '.svg')}, "
          f"{bench.results['seconds']} s, load {bench.results['load_average_at_end']}")
    return 1 if bench.results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
