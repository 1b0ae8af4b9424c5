"""The chart's alerts and dashboard against a real Prometheus (Debian's 2.42 build, installed by
`e2e/alerts/install-prometheus`).

- `promtool test rules` runs `alerts/rules.test.yaml` on the rule groups rendered from the chart:
  every alert fires with its labels and annotations, and stays quiet before its `for`, for healthy
  objects and after recovery; the same tests fail once a threshold changes, so they can fail.
- A real Prometheus on loopback (1 s scrape and evaluation, storage in a temporary directory)
  scrapes two `fedid run` replicas (a leader, and a standby kept out of the election by a Lease
  held elsewhere) with the rules rendered from the chart, and the alerts are read back through its
  HTTP API: a rejected exchange fires FedidExchangeRejected for that identity only, an identity in
  a namespace its issuer does not allow FedidIdentityNotReady (reason NamespaceNotAllowed) for
  that identity only; with the token service stopped, FedidRefreshFailing and FedidRenewalOverdue
  fire for the identity that exchanges there, not before; with the leader stopped
  FedidLeaderMissing fires, and with no replica left FedidDown.
- Every PromQL expression of the rules and of the dashboard (`charts/fedid/dashboards/fedid.json`)
  is accepted by that Prometheus, and returns series from the running fedid where it should; the
  dashboard parses, its panels do not overlap and all read the `datasource` variable.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pytest
import requests
import yaml

from conftest import E2E_DIR, REPO_ROOT, Cluster, wait_for
from fedid_harness import (
    OPERATOR_NAMESPACE,
    Operator,
    chart_operator,
    condition,
    fedid_binary,
    free_port,
    get_json,
    wait_for_reason,
    write_serving_certificate,
)
from peers.recorder import Recorded, Recorder, Reply

CHART = REPO_ROOT / "charts" / "fedid"
DASHBOARD = CHART / "dashboards" / "fedid.json"
RULE_TESTS = E2E_DIR / "alerts" / "rules.test.yaml"
RUN = uuid.uuid4().hex[:6]
TEAM = f"alerts-{RUN}"
OUTSIDE = f"alerts-outside-{RUN}"  # a namespace the issuer does not allow
ISSUER = f"alerts-{RUN}"
ALERTS = ["FedidRenewalOverdue", "FedidRefreshFailing", "FedidExchangeRejected", "FedidIdentityNotReady",
          "FedidKeyRotationOverdue", "FedidJWKSNotServed", "FedidLeaderMissing", "FedidDown"]
# The live test's rules: every alert at once (`for: 0s`), a 5 s renewal grace, 2 failed attempts.
LIVE_VALUES = [
    *(f"prometheusRule.alerts.{alert}.for=0s" for alert in
      ("renewalOverdue", "refreshFailing", "exchangeRejected", "identityNotReady", "keyRotationOverdue",
       "jwksNotServed", "leaderMissing", "down")),
    "prometheusRule.alerts.renewalOverdue.graceSeconds=5",
    "prometheusRule.alerts.refreshFailing.attempts=2",
]
# Dashboard queries that have no series here, and why.
EMPTY_HERE = {
    "fedid_pod_tokens_issued_total": "the harness runs no pod server",
    "fedid_webhook_reviews_total": "the harness runs no pod server",
    "fedid_webhook_duration_seconds_bucket": "the harness runs no pod server",
    "fedid_token_requests_total": "the harness runs no pod server",
    "fedid_exchange_budget_waits_total": "the default request budget never runs out here",
}


def binary(name: str) -> str:
    """prometheus or promtool, installed from Debian first when missing (e2e/test does it too)."""
    if shutil.which(name) is None:
        subprocess.run([str(E2E_DIR / "alerts" / "install-prometheus")], check=True, timeout=600)
    found = shutil.which(name)
    assert found, f"{name} is not installed (e2e/alerts/install-prometheus)"
    return found


def rendered(cluster: Cluster, *values: str, show: str = "templates/prometheusrule.yaml") -> dict:
    """One template of the chart, rendered for release "fedid" in fedid-system with `--set` values."""
    args = [arg for value in ("prometheusRule.enabled=true", *values) for arg in ("--set", value)]
    result = subprocess.run(
        [str(cluster.bin / "helm"), "template", "fedid", str(CHART), "-n", "fedid-system", *args, "--show-only", show],
        capture_output=True, text=True, env=cluster.env(), timeout=60, check=True,
    )
    return yaml.safe_load(result.stdout)


def write_rules(cluster: Cluster, directory: Path, *values: str) -> Path:
    """The PrometheusRule's groups as a plain Prometheus rule file."""
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rendered(cluster, *values)["spec"]["groups"]}))
    return path


def promtool_test(cluster: Cluster, directory: Path, *values: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(RULE_TESTS, directory / "rules.test.yaml")
    write_rules(cluster, directory, *values)
    return subprocess.run([binary("promtool"), "test", "rules", "rules.test.yaml"], cwd=directory,
                          capture_output=True, text=True, timeout=120)


# --- promtool unit tests -------------------------------------------------------------------------


def test_promtool_unit_tests_show_every_alert_firing_and_quiet(cluster: Cluster, tmp_path: Path) -> None:
    rules = rendered(cluster)["spec"]["groups"][0]["rules"]
    assert [rule["alert"] for rule in rules] == ALERTS
    checked = subprocess.run([binary("promtool"), "check", "rules", str(write_rules(cluster, tmp_path))],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout, checked.stdout + checked.stderr

    result = promtool_test(cluster, tmp_path)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    # Each alert has a case where it fires (with labels and annotations) and one where it does not.
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for alert in ALERTS:
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case["exp_alerts"] for case in mine), f"{alert} is never shown firing"
        assert any(not case["exp_alerts"] for case in mine), f"{alert} is never shown quiet"
        for case in mine:
            for expected in case["exp_alerts"]:
                assert expected["exp_annotations"]["summary"] and expected["exp_annotations"]["description"]


def test_the_chart_readme_shows_each_alert_as_rendered(cluster: Cluster) -> None:
    rows = re.findall(r"^\| \*\*(Fedid\w+)\*\* \| `(.+?)` for (\w+) \|", (CHART / "README.md").read_text(), flags=re.MULTILINE)
    shown = {alert: (expr, duration) for alert, expr, duration in rows}
    assert list(shown) == ALERTS
    for rule in rendered(cluster)["spec"]["groups"][0]["rules"]:
        expr = " ".join(rule["expr"].replace("( ", "(").split()).replace("( ", "(").replace(" )", ")")
        assert shown[rule["alert"]] == (expr, rule["for"]), rule["alert"]


@pytest.mark.parametrize(
    ("value", "alert"),
    [
        ("prometheusRule.alerts.renewalOverdue.graceSeconds=0", "FedidRenewalOverdue"),
        ("prometheusRule.alerts.refreshFailing.attempts=4", "FedidRefreshFailing"),
        ("prometheusRule.alerts.exchangeRejected.for=0s", "FedidExchangeRejected"),
        ("prometheusRule.alerts.identityNotReady.for=0s", "FedidIdentityNotReady"),
        ("prometheusRule.alerts.keyRotationOverdue.graceSeconds=0", "FedidKeyRotationOverdue"),
        ("prometheusRule.alerts.jwksNotServed.for=10m", "FedidJWKSNotServed"),
        ("prometheusRule.alerts.leaderMissing.severity=page", "FedidLeaderMissing"),
        ("prometheusRule.alerts.down.for=1m", "FedidDown"),
    ],
)
def test_the_unit_tests_fail_when_an_alert_changes(cluster: Cluster, tmp_path: Path, value: str, alert: str) -> None:
    result = promtool_test(cluster, tmp_path, value)
    assert result.returncode != 0 and f"alertname: {alert}," in result.stdout + result.stderr, result.stdout + result.stderr


# --- a real Prometheus scraping fedid -------------------------------------------------------------


class Prometheus:
    """`prometheus` on loopback with its storage in a temporary directory; stopped at the end."""

    def __init__(self, workdir: Path, config: dict, rules: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "prometheus.yml").write_text(yaml.safe_dump({**config, "rule_files": [str(rules)]}))
        self.log = workdir / "prometheus.log"
        self.process = subprocess.Popen(
            [binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
        )
        wait_for("Prometheus to be ready", self._ready, timeout=60)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        return requests.get(f"{self.url}/-/ready", timeout=5).status_code == 200

    def api(self, path: str, **params: str) -> dict:
        reply = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = reply.json()
        assert reply.status_code == 200 and body["status"] == "success", f"{path} {params}: {reply.text[:500]}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def firing(self, alert: str) -> list[dict]:
        """The labels of every firing instance of `alert`."""
        return [a["labels"] for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == alert and a["state"] == "firing"]

    def evaluated_since(self, moment: float) -> bool:
        """Whether every rule was evaluated, healthy, after `moment` (so "not firing" means it)."""
        rules = [rule for group in self.api("rules")["groups"] for rule in group["rules"]]
        assert [rule["name"] for rule in rules] == ALERTS
        assert all(rule["health"] in ("ok", "unknown") for rule in rules), rules
        return all(rule["health"] == "ok" and parse_time(rule["lastEvaluation"]) > moment for rule in rules)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def parse_time(text: str) -> float:
    # Prometheus reports nanoseconds; Python parses microseconds.
    text = re.sub(r"(\.\d{6})\d*", r"\1", text).replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


def scrape_job(cluster: Cluster, name: str, operator: Operator) -> dict:
    """A scrape of one replica, with the endpoint settings of the chart's ServiceMonitor."""
    monitor = rendered(cluster, "serviceMonitor.enabled=true", show="templates/servicemonitor.yaml")
    (endpoint,) = monitor["spec"]["endpoints"]
    return {
        "job_name": name,
        "scrape_interval": "1s",
        "metrics_path": endpoint["path"],
        "honor_labels": endpoint["honorLabels"],
        "scheme": "https",
        "tls_config": {"ca_file": str(operator.ca)},
        "static_configs": [{"targets": [f"127.0.0.1:{operator.port}"]}],
    }


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorder, str]]:
    """The token service and its CA: exchanges at /ok succeed, at /rejected are refused."""
    ca, cert, key = write_serving_certificate(tmp_path_factory.mktemp("alerts-token-service"))

    def answer(seen: Recorded) -> Reply:
        if seen.path.endswith("/rejected"):
            return Reply(400, {"error": "invalid_grant"})
        return Reply(200, {"access_token": "at-alerts", "token_type": "Bearer", "expires_in": 600})

    with Recorder(cert, key, handler=answer) as recorder:
        yield recorder, ca.read_text()


@pytest.fixture(scope="module")
def fedid(cluster: Cluster, service: tuple[Recorder, str]) -> Iterator[tuple[Operator, Operator]]:
    """The leader, and a standby whose Lease is held elsewhere, with one issuer and four identities
    (one of them in a namespace the issuer does not allow)."""
    service, ca = service
    with chart_operator(cluster, "fedid-alerts", [TEAM, OUTSIDE]) as leader:
        issuer = {
            "apiVersion": "fedid.dev/v1alpha1", "kind": "IdentityIssuer", "metadata": {"name": ISSUER},
            "spec": {"issuerURL": leader.issuer_url(ISSUER), "signing": {"prepublishPeriod": "0s"},
                     "allowedNamespaces": {"names": [TEAM]},
                     "exchange": {"allowedEndpoints": [f"{service.url}/"]}},
        }
        wait_for("the issuer to be accepted", lambda: cluster.apply(json.dumps(issuer)).returncode == 0)
        cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{ISSUER}", "--timeout=60s")
        for name, path in (("steady", "/ok"), ("rejected", "/rejected")):
            cluster.apply(json.dumps({
                "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
                "metadata": {"name": name, "namespace": TEAM},
                "spec": {"issuerRef": ISSUER, "audiences": ["token-service"], "lifetime": "30s",
                         "exchange": {"caBundle": ca, "timeout": "2s",
                                      "oauth2": {"tokenURL": f"{service.url}{path}"}}},
            }))
        cluster.apply(json.dumps({
            "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
            "metadata": {"name": "plain", "namespace": TEAM},
            "spec": {"issuerRef": ISSUER, "audiences": ["sts.example.com"], "lifetime": "10m"},
        }))
        cluster.apply(json.dumps({
            "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
            "metadata": {"name": "outsider", "namespace": OUTSIDE},
            "spec": {"issuerRef": ISSUER, "audiences": ["sts.example.com"], "lifetime": "10m"},
        }))
        lease = f"fedid-alerts-held-{RUN}"
        held = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease, "namespace": OPERATOR_NAMESPACE},
            "spec": {"holderIdentity": "elsewhere", "leaseDurationSeconds": 3600,
                     "renewTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())},
        }
        cluster.apply(json.dumps(held))
        standby = Operator(cluster=cluster, binary=fedid_binary(), workdir=Path(tempfile.mkdtemp(prefix="fedid-alerts-standby-")),
                           kubeconfig=leader.kubeconfig, name="fedid-alerts-standby",
                           extra_args=["--leader-election-lease-name", lease])
        standby.start()
        try:
            yield leader, standby
        finally:
            standby.stop()
            cluster.kubectl("delete", "lease", lease, "-n", OPERATOR_NAMESPACE, check=False)
            cluster.kubectl("delete", "namespace", TEAM, OUTSIDE, "--wait=false", check=False)
            cluster.kubectl("delete", "identityissuer", ISSUER, "--wait=false", check=False)


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, fedid: tuple[Operator, Operator]) -> Iterator[Prometheus]:
    leader, standby = fedid
    workdir = Path(tempfile.mkdtemp(prefix="fedid-e2e-prometheus-"))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [scrape_job(cluster, "fedid-leader", leader), scrape_job(cluster, "fedid-standby", standby)],
    }
    running = Prometheus(workdir, config, write_rules(cluster, workdir, *LIVE_VALUES))
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def ready(cluster: Cluster, name: str) -> dict | None:
    found = get_json(cluster, "fid", name, "-n", TEAM)
    return found if (condition(found) or {}).get("status") == "True" else None


def identities(alerts: list[dict]) -> set[str]:
    """The names of this module's identities among firing alerts (a shared cluster may hold other
    modules' identities, which this leader reconciles too)."""
    return {labels["name"] for labels in alerts if labels.get("namespace") == TEAM}


def not_ready(alerts: list[dict]) -> set[tuple[str, str, str]]:
    """(namespace, name, reason) of the FedidIdentityNotReady alerts about this module's identities."""
    return {(labels["namespace"], labels["name"], labels["reason"]) for labels in alerts
            if labels.get("namespace") in (TEAM, OUTSIDE)}


def mine(alerts: list[dict]) -> list[dict]:
    """The firing alerts about this module's issuer, or about no object (the replicas)."""
    return [labels for labels in alerts if labels.get("issuer", ISSUER) == ISSUER and labels.get("namespace", TEAM) == TEAM]


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["description"], f"{panel['title']!r} has no description"
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        assert all(target["datasource"] == panel["datasource"] for target in panel["targets"]), panel["title"]


def test_every_expression_of_the_rules_and_the_dashboard_runs_on_prometheus(
    cluster: Cluster, fedid: tuple[Operator, Operator], prometheus: Prometheus
) -> None:
    for name in ("steady", "plain"):
        wait_for(f"{name} to be Ready", lambda: ready(cluster, name), timeout=60)
    wait_for("both replicas scraped", lambda: len(prometheus.query("up == 1")) == 2, timeout=30)
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len(panels) >= 12 and dashboard["uid"] == "fedid"
    queries = [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]
    titles = " ".join(title for title, _ in queries).lower()
    for topic in ("condition", "tokens issued", "reconcile failures", "exchange requests", "exchange latency",
                  "expire", "key age", "webhook", "token requests", "leader"):
        assert topic in titles, f"no dashboard panel about {topic}"

    def runs(expr: str) -> list[dict]:
        return prometheus.query(expr.replace("$__rate_interval", "1m").replace("$__range", "5m"))

    # Counters need two scrapes in the rate window, and each identity its first exchange.
    wait_for("an exchange counted in two scrapes", lambda: runs(
        'sum by (outcome) (rate(fedid_exchange_requests_total{outcome="Exchanged"}[1m])) > 0'), timeout=60)
    for title, expr in queries:
        result = runs(expr)  # a query Prometheus refuses fails inside `api`
        metrics = set(re.findall(r"\bfedid_[a-z_]+", expr))
        if metrics & set(EMPTY_HERE):
            continue
        assert result, f"dashboard panel {title!r}: {expr} returned no series"
    # Each rule's expression is valid PromQL here and every series it reads exists.
    for rule in rendered(cluster, *LIVE_VALUES)["spec"]["groups"][0]["rules"]:
        runs(rule["expr"])
        for metric in set(re.findall(r"\bfedid_[a-z_]+", rule["expr"])):
            assert runs(f"count({metric})"), f"{rule['alert']} reads {metric}, which fedid does not export"
    # The per-identity gauges name the identity with fedid's own namespace label.
    steady = runs(f'fedid_token_renewal_timestamp_seconds{{namespace="{TEAM}", name="steady"}}')
    assert len(steady) == 1 and steady[0]["metric"]["job"] == "fedid-leader", steady
    assert {s["metric"]["job"]: float(s["value"][1]) for s in runs("fedid_leader")} == {"fedid-leader": 1, "fedid-standby": 0}
    served = runs(f'fedid_issuer_jwks_served{{issuer="{ISSUER}"}}')
    assert sorted(float(s["value"][1]) for s in served) == [1.0, 1.0], "both replicas serve the JWKS"


def test_alerts_fire_when_peers_stop_and_not_before(
    cluster: Cluster, service: tuple[Recorder, str], fedid: tuple[Operator, Operator], prometheus: Prometheus
) -> None:
    leader, standby = fedid
    for name in ("steady", "plain"):
        wait_for(f"{name} to be Ready", lambda: ready(cluster, name), timeout=60)

    # A refused exchange fires for that identity only.
    rejected = wait_for("FedidExchangeRejected for the rejected identity", lambda: prometheus.firing("FedidExchangeRejected"), timeout=60)
    assert identities(rejected) == {"rejected"}, rejected
    assert {labels["severity"] for labels in mine(rejected)} == {"warning"}

    # An identity in a namespace the issuer does not allow is refused for good (Ready=False, not
    # retried): FedidIdentityNotReady fires for that identity only, with its reason.
    refusal = condition(wait_for_reason(cluster, OUTSIDE, "outsider", "NamespaceNotAllowed", timeout=60))
    assert refusal["status"] == "False", refusal
    refused = wait_for("FedidIdentityNotReady for outsider",
                       lambda: (f if not_ready(f := prometheus.firing("FedidIdentityNotReady")) else None), timeout=60)
    assert not_ready(refused) == {(OUTSIDE, "outsider", "NamespaceNotAllowed")}, refused
    assert [labels["severity"] for labels in refused if labels["namespace"] == OUTSIDE] == ["warning"]

    # Healthy so far: every rule evaluated after everything was Ready, nothing else firing for the
    # healthy identities, the issuer or the replicas.
    settled = time.time()
    wait_for("every rule evaluated", lambda: prometheus.evaluated_since(settled), timeout=30)
    for alert in ("FedidRenewalOverdue", "FedidRefreshFailing"):
        assert not identities(prometheus.firing(alert)) & {"steady", "plain"}, prometheus.firing(alert)
    # Not Ready is the refused identity only: not the Ready ones, nor the rejected one, whose
    # retried failure leaves Ready Unknown.
    assert not_ready(prometheus.firing("FedidIdentityNotReady")) == {(OUTSIDE, "outsider", "NamespaceNotAllowed")}
    for alert in ("FedidKeyRotationOverdue", "FedidJWKSNotServed", "FedidLeaderMissing", "FedidDown"):
        assert mine(prometheus.firing(alert)) == [], alert

    # The token service stops: steady's next renewal (within its 30 s token's 20 s) fails,
    # backs off, and both freshness alerts fire for it, while plain (no exchange) stays quiet.
    service[0].__exit__()
    stopped = time.time()
    failing = wait_for("FedidRefreshFailing for steady", lambda: (
        f if "steady" in identities(f := prometheus.firing("FedidRefreshFailing")) else None), timeout=90)
    overdue = wait_for("FedidRenewalOverdue for steady", lambda: (
        f if "steady" in identities(f := prometheus.firing("FedidRenewalOverdue")) else None), timeout=60)
    print(f"refresh failing and renewal overdue fired {time.time() - stopped:.0f}s after the service stopped")
    assert "plain" not in identities(failing) | identities(overdue)
    # Failing renewals are retried, so they do not make steady (or any identity here) not Ready.
    assert not identities(prometheus.firing("FedidIdentityNotReady")), prometheus.firing("FedidIdentityNotReady")
    status = get_json(cluster, "fid", "steady", "-n", TEAM)
    assert condition(status, "CredentialsFresh")["reason"] == "ExchangeUnavailable"
    assert status["status"]["failedAttempts"] >= 2
    assert prometheus.firing("FedidLeaderMissing") == []

    # The leader stops: the standby cannot take over (its Lease is held elsewhere), so replicas are
    # up without a leader; then the standby stops too and no replica is left.
    leader.stop()
    wait_for("FedidLeaderMissing", lambda: prometheus.firing("FedidLeaderMissing"), timeout=30)
    assert prometheus.firing("FedidDown") == []
    assert mine(prometheus.firing("FedidJWKSNotServed")) == [], "the standby still serves the JWKS"
    standby.stop()
    down = wait_for("FedidDown", lambda: prometheus.firing("FedidDown"), timeout=30)
    assert down[0]["severity"] == "critical"
    wait_for("FedidLeaderMissing to resolve once no replica is left", lambda: prometheus.firing("FedidLeaderMissing") == [], timeout=30)
