"""The Helm chart (charts/fedid) against a real control plane.

helm renders, installs and uninstalls the chart the way a cluster admin would;
the apiserver judges the result: server-side dry-runs validate every object
(the CRDs' schemas included), SubjectAccessReviews (`kubectl auth can-i`) check
the ServiceAccount's rights, and PodSecurity admission checks the pod template.
There is no kubelet, so pods never run: the tests assert objects, not processes.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import tarfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO_ROOT, Cluster, wait_for
from fedid_harness import (
    CLUSTER_WIDE_RIGHTS,
    Operator,
    can_i_list,
    documented_rights,
    fedid_binary,
    free_port,
    install_chart_service_account,
)

CHART = REPO_ROOT / "charts" / "fedid"
CRDS = REPO_ROOT / "crds"
# Names unique to this run, so a reused cluster (FEDID_E2E_CLUSTER) starts clean. Cluster-scoped
# objects (ClusterRoles, IdentityIssuers) are named after the release, so releases never collide.
RUN = uuid.uuid4().hex[:6]
# The installed release (the `release` fixture); it contains "fedid", so it is also the full name.
RELEASE = f"fedid-{RUN}"
ISSUER_URL = "https://fedid.example.com/clusters/e2e"


def issuer_values(name: str, *extra: str) -> list[str]:
    """`--set` arguments creating an IdentityIssuer called `name` that allows namespace ci-web."""
    values = [
        "issuer.create=true",
        f"issuer.name={name}",
        f"issuer.url={ISSUER_URL}",
        "issuer.allowedNamespaces.names={ci-web}",
        *extra,
    ]
    return [arg for value in values for arg in ("--set", value)]


# Every optional object and feature at once (the ServiceMonitor needs its CRD, see below).
EVERYTHING = issuer_values(
    f"e2e-everything-{RUN}",
    "issuer.signing.algorithm=ES256",
    "issuer.allowedNamespaces.selector.matchLabels.fedid\\.dev/ci=enabled",
    "issuer.claims[0].name=cluster",
    "issuer.claims[0].string=e2e",
    "issuer.subjectTemplate=repo:{claims.cluster}:{namespace}:{name}",
    "tls.enabled=true",
    "tls.secretName=fedid-tls",
    "ingress.enabled=true",
    "ingress.className=nginx",
    "ingress.host=fedid.example.com",
    "ingress.tlsSecretName=fedid-public-tls",
    "networkPolicy.enabled=true",
    "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
    "networkPolicy.ingressFrom[0].ipBlock.cidr=0.0.0.0/0",
    "serviceMonitor.enabled=true",
    "serviceMonitor.labels.release=prometheus",
    "serviceMonitor.scrapeTimeout=10s",
    "serviceMonitor.tlsConfig.insecureSkipVerify=true",
    "prometheusRule.enabled=true",
    "prometheusRule.additionalLabels.release=prometheus",
    "grafanaDashboard.enabled=true",
    "topologySpreadConstraints[0].maxSkew=1",
    "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
    "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
    "podAntiAffinity=hard",
    "podAnnotations.example\\.com/team=ci",
    "podLabels.team=ci",
    "nodeSelector.kubernetes\\.io/os=linux",
    "tolerations[0].key=dedicated",
    "tolerations[0].operator=Exists",
    "priorityClassName=system-cluster-critical",
    "imagePullSecrets[0].name=regcred",
    "image.digest=sha256:" + "0" * 64,
    "logFormat=json",
    "serviceAccount.annotations.example\\.com/owner=platform",
    "service.annotations.example\\.com/owner=platform",
)

# Only the parts of a ServiceMonitor this chart writes, with the upstream types, so the dry-run
# checks field names and types without the Prometheus Operator. Created only when absent: a real
# ServiceMonitor CRD in a reused cluster is never replaced.
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"plural": "servicemonitors", "singular": "servicemonitor", "kind": "ServiceMonitor"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["selector", "endpoints"],
                                "properties": {
                                    "selector": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                    "namespaceSelector": {
                                        "type": "object",
                                        "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                                    },
                                    "endpoints": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "port": {"type": "string"},
                                                "path": {"type": "string"},
                                                "scheme": {"type": "string", "enum": ["http", "https"]},
                                                "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                                                "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                                                "tlsConfig": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                                "honorLabels": {"type": "boolean"},
                                            },
                                        },
                                    },
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


# The same for a PrometheusRule: the upstream types of the fields the chart writes.
PROMETHEUS_RULE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "prometheusrules.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"plural": "prometheusrules", "singular": "prometheusrule", "kind": "PrometheusRule"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "groups": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["name"],
                                            "properties": {
                                                "name": {"type": "string", "minLength": 1},
                                                "rules": {
                                                    "type": "array",
                                                    "items": {
                                                        "type": "object",
                                                        "required": ["expr"],
                                                        "properties": {
                                                            "alert": {"type": "string"},
                                                            "expr": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
                                                            "for": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                                                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                                                        },
                                                    },
                                                },
                                            },
                                        },
                                    }
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}

def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs the cluster's own helm; raises with its output when `check` and it fails."""
    result = subprocess.run(
        [str(cluster.bin / "helm"), *args], capture_output=True, text=True, env=cluster.env(), timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def render(cluster: Cluster, namespace: str, *args: str) -> str:
    """`helm template` of the chart for a release named like the namespace."""
    return helm(cluster, "template", namespace, str(CHART), "-n", namespace, *args).stdout


def kinds(manifest: str) -> list[str]:
    """The kinds of the objects in a multi-document manifest, in order."""
    return re.findall(r"^kind: (\w+)$", manifest, flags=re.MULTILINE)


def get_json(cluster: Cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def objects(cluster: Cluster, manifest: str, by_namespace: bool = False) -> dict[str, dict]:
    """The objects of a rendered manifest by "Kind/name" ("Kind/namespace/name" for namespaced
    ones, with `by_namespace`), decoded by kubectl itself (`--local`: no
    server, so kinds whose CRDs the cluster lacks, such as cert-manager's, decode too). Removing a
    label no object has changes nothing."""
    result = cluster.kubectl("label", "--local", "-f", "-", "fedid-chart-test-", "-o", "json", input=manifest)
    decoder, text, found = json.JSONDecoder(), result.stdout, {}
    index = 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        item, index = decoder.raw_decode(text, index)
        for obj in item["items"] if item.get("kind") == "List" else [item]:
            namespace = f"{obj['metadata']['namespace']}/" if by_namespace and "namespace" in obj["metadata"] else ""
            found[f"{obj['kind']}/{namespace}{obj['metadata']['name']}"] = obj
    return found


def container_of(rendered: dict[str, dict], name: str) -> dict:
    """The fedid container of Deployment `name` among rendered objects."""
    # Keyed "Deployment/<name>", or by namespace too; `render` names the namespace after the release.
    deployment = rendered.get(f"Deployment/{name}") or rendered[f"Deployment/{name}/{name}"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def cluster_rules(rendered: dict[str, dict], name: str) -> dict[tuple[str, str], list[str]]:
    """The ClusterRole's verbs by (API group, resource), resourceNames appended as "resource=name"."""
    rules: dict[tuple[str, str], list[str]] = {}
    for rule in rendered[f"ClusterRole/{name}"]["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                names = rule.get("resourceNames")
                key = (group, f"{resource}={','.join(names)}" if names else resource)
                assert key not in rules, f"{key} has two rules"
                rules[key] = rule["verbs"]
    return rules


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    # Named like a release of the chart, so the objects' names are the release name.
    name = f"fedid-chart-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> None:
    """fedid's CRDs, applied the way test_operator.py does (shared by the session, never deleted)."""
    cluster.kubectl("apply", "--server-side", "-f", str(CRDS))
    for crd in ("identityissuers.fedid.dev", "federatedidentities.fedid.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[dict]:
    """The chart installed with its CRDs and a default issuer, as the README says; uninstalled after."""
    name = RELEASE
    namespace = f"fedid-system-{RUN}"
    issuer = f"e2e-{RUN}"
    # In a fresh cluster (CI) this is the first to install the CRDs; a reused one may have them.
    crds_existed = cluster.kubectl("get", "crd", "identityissuers.fedid.dev", check=False).returncode == 0
    installed = helm(cluster, "install", name, str(CHART), "-n", namespace, "--create-namespace", *issuer_values(issuer))
    yield {"name": name, "namespace": namespace, "issuer": issuer, "notes": installed.stdout, "crds_existed": crds_existed}
    helm(cluster, "uninstall", name, "-n", namespace, "--wait", check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


# --- rendering ---------------------------------------------------------------------------------


# The pod server's certificate from cert-manager: the chart's own self-signed CA, or an issuer.
CERT_MANAGER = ["--set", "pods.certManager.enabled=true"]
CERT_MANAGER_ISSUER = [*CERT_MANAGER, "--set", "pods.certManager.issuerRef.name=internal-ca", "--set", "pods.certManager.issuerRef.kind=ClusterIssuer"]


@pytest.mark.parametrize(
    "values",
    [[], EVERYTHING, [*EVERYTHING, *CERT_MANAGER], ["--set", "pods.enabled=false"]],
    ids=["defaults", "everything", "cert-manager", "no-pods"],
)
def test_lint_is_clean(cluster: Cluster, values: list[str]) -> None:
    result = helm(cluster, "lint", "--strict", str(CHART), *values)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_crds_are_the_repository_files_through_the_symlink(cluster: Cluster, tmp_path: Path) -> None:
    link = CHART / "crds"
    assert link.is_symlink() and Path(link.readlink()) == Path("../../crds"), "charts/fedid/crds must link to crds/"
    generated = sorted(CRDS.glob("*.yaml"))
    assert len(generated) == 2

    rendered = helm(cluster, "template", "fedid", str(CHART), "--include-crds").stdout
    for crd in generated:
        assert crd.read_text().strip() in rendered, f"helm template --include-crds lacks {crd.name}"
    assert kinds(helm(cluster, "template", "fedid", str(CHART)).stdout).count("CustomResourceDefinition") == 0

    # The packaged chart carries copies of the files, not the link.
    helm(cluster, "package", str(CHART), "-d", str(tmp_path))
    with tarfile.open(tmp_path / "fedid-0.1.0.tgz") as archive:
        members = {member.name: member for member in archive.getmembers()}
        for crd in generated:
            member = members[f"fedid/crds/{crd.name}"]
            assert member.isfile(), f"{member.name} must be a regular file in the package"
            assert archive.extractfile(member).read() == crd.read_bytes()


def test_optional_objects_follow_their_values(cluster: Cluster) -> None:
    defaults = kinds(render(cluster, "fedid"))
    assert sorted(defaults) == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
            # The pod server (pods.enabled): its Service and the webhook.
            "Service",
            "MutatingWebhookConfiguration",
        ]
    )
    # A single replica gets no PodDisruptionBudget (minAvailable 1 would block every drain) and
    # runs without leader election, which then also needs no Lease rights.
    single = render(cluster, "fedid", "--set", "replicaCount=1", "--set", "leaderElection.enabled=false")
    assert "PodDisruptionBudget" not in kinds(single)
    assert "--leader-election=false" in single and "coordination.k8s.io" not in single
    budget = render(cluster, "fedid", "--set-json", 'exchange={"qps": 2.5, "burst": 7, "concurrency": 3}')
    assert "--exchange-qps=2.5" in budget and "--exchange-burst=7" in budget and "--exchange-concurrency=3" in budget
    api_budget = render(cluster, "fedid", "--set-json", 'kubeApi={"qps": 12.5, "burst": 30}')
    assert "--kube-api-qps=12.5" in api_budget and "--kube-api-burst=30" in api_budget
    assert sorted(kinds(render(cluster, "fedid", *EVERYTHING))) == sorted(
        defaults + ["IdentityIssuer", "Ingress", "NetworkPolicy", "ServiceMonitor", "PrometheusRule", "ConfigMap"]
    )
    # cert-manager's objects only with pods.certManager.enabled: with the chart's own CA, or one
    # Certificate from a given issuer.
    assert sorted(kinds(render(cluster, "fedid", *CERT_MANAGER))) == sorted(defaults + ["Issuer", "Certificate", "Issuer", "Certificate"])
    assert sorted(kinds(render(cluster, "fedid", *CERT_MANAGER_ISSUER))) == sorted(defaults + ["Certificate"])
    # Without the pod server neither its Service nor the webhook, whatever certManager says.
    no_pods = kinds(render(cluster, "fedid", *CERT_MANAGER, "--set", "pods.enabled=false"))
    assert sorted(no_pods + ["Service", "MutatingWebhookConfiguration"]) == sorted(defaults)


# Every value of the alerts and the dashboard, each different from its default.
MONITORING_VALUES = {
    "prometheusRule.additionalLabels.release": "prometheus",
    "prometheusRule.alerts.renewalOverdue.for": "2m",
    "prometheusRule.alerts.renewalOverdue.severity": "page",
    "prometheusRule.alerts.renewalOverdue.graceSeconds": "90",
    "prometheusRule.alerts.refreshFailing.for": "7m",
    "prometheusRule.alerts.refreshFailing.severity": "ticket",
    "prometheusRule.alerts.refreshFailing.attempts": "5",
    "prometheusRule.alerts.exchangeRejected.for": "3m",
    "prometheusRule.alerts.exchangeRejected.severity": "info",
    "prometheusRule.alerts.identityNotReady.for": "1h",
    "prometheusRule.alerts.identityNotReady.severity": "ticket",
    "prometheusRule.alerts.keyRotationOverdue.for": "30m",
    "prometheusRule.alerts.keyRotationOverdue.severity": "page",
    "prometheusRule.alerts.keyRotationOverdue.graceSeconds": "7200",
    "prometheusRule.alerts.jwksNotServed.for": "2m",
    "prometheusRule.alerts.jwksNotServed.severity": "page",
    "prometheusRule.alerts.leaderMissing.for": "10m",
    "prometheusRule.alerts.leaderMissing.severity": "warning",
    "prometheusRule.alerts.down.for": "0s",
    "prometheusRule.alerts.down.severity": "warning",
    "grafanaDashboard.label": "example.com/dashboard",
    "grafanaDashboard.labelValue": "fedid",
    "grafanaDashboard.additionalLabels.team": "platform",
    "grafanaDashboard.annotations.grafana_folder": "CI",
}


def test_alerts_and_dashboard_render_only_when_enabled_with_their_values(cluster: Cluster) -> None:
    defaults = kinds(render(cluster, "fedid"))
    assert "PrometheusRule" not in defaults and "ConfigMap" not in defaults
    # Settings without `enabled` render nothing either.
    settings = [arg for key, value in MONITORING_VALUES.items() for arg in ("--set", f"{key}={value}")]
    assert sorted(kinds(render(cluster, "fedid", *settings))) == sorted(defaults)

    enabled = objects(cluster, render(cluster, "fedid", "--set", "prometheusRule.enabled=true",
                                      "--set", "grafanaDashboard.enabled=true"))
    rule, dashboard = enabled["PrometheusRule/fedid"], enabled["ConfigMap/fedid-dashboard"]
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "fedid"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1" and "annotations" not in dashboard["metadata"]
    assert json.loads(dashboard["data"]["fedid.json"]) == json.loads((CHART / "dashboards" / "fedid.json").read_text())
    by_alert = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert by_alert["FedidRenewalOverdue"]["for"] == "1m" and by_alert["FedidDown"]["labels"] == {"severity": "critical"}
    assert by_alert["FedidIdentityNotReady"]["for"] == "15m"
    assert by_alert["FedidIdentityNotReady"]["labels"] == {"severity": "warning"}

    # Every value lands where it says.
    changed = objects(cluster, render(cluster, "fedid", "--set", "prometheusRule.enabled=true",
                                      "--set", "grafanaDashboard.enabled=true", *settings))
    rule, dashboard = changed["PrometheusRule/fedid"], changed["ConfigMap/fedid-dashboard"]
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    by_alert = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    for key, alert in (("renewalOverdue", "FedidRenewalOverdue"), ("refreshFailing", "FedidRefreshFailing"),
                       ("exchangeRejected", "FedidExchangeRejected"), ("identityNotReady", "FedidIdentityNotReady"),
                       ("keyRotationOverdue", "FedidKeyRotationOverdue"), ("jwksNotServed", "FedidJWKSNotServed"),
                       ("leaderMissing", "FedidLeaderMissing"), ("down", "FedidDown")):
        assert by_alert[alert]["for"] == MONITORING_VALUES[f"prometheusRule.alerts.{key}.for"], alert
        assert by_alert[alert]["labels"] == {"severity": MONITORING_VALUES[f"prometheusRule.alerts.{key}.severity"]}, alert
    assert by_alert["FedidRenewalOverdue"]["expr"].split()[-2:] == [">", "90"]
    assert by_alert["FedidRefreshFailing"]["expr"].split()[-2:] == [">=", "5"]
    assert by_alert["FedidKeyRotationOverdue"]["expr"].split()[-2:] == ["+", "7200"]
    labels = dashboard["metadata"]["labels"]
    assert labels["example.com/dashboard"] == "fedid" and labels["team"] == "platform" and "grafana_dashboard" not in labels
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "CI"}
    # The Lease the leader alert names follows leaderElection.leaseName and the release namespace.
    lease = objects(cluster, render(cluster, "fedid", "-n", "ops", "--set", "prometheusRule.enabled=true",
                                    "--set", "leaderElection.leaseName=ci-leader"))
    leader = {r["alert"]: r for r in lease["PrometheusRule/fedid"]["spec"]["groups"][0]["rules"]}["FedidLeaderMissing"]
    assert "Lease ops/ci-leader" in leader["annotations"]["description"]


# Values that must fail, each with the words that tell the user what is wrong: the schema names
# the value, the templates explain combinations.
BAD_VALUES = [
    (["issuer.create=true", "issuer.url=http://x"], "at '/issuer/url': 'http://x' does not match pattern"),
    (["issuer.create=true", "issuer.url=https://fedid.example.com/"], "at '/issuer/url'"),
    (["issuer.create=true"], "issuer.url is required when issuer.create is true"),
    (["replicaCount=0"], "at '/replicaCount': minimum: got 0, want 1"),
    (["logFormat=xml"], "at '/logFormat': value must be one of 'text', 'json'"),
    (["image.pullPolicy=Sometimes"], "at '/image/pullPolicy': value must be one of"),
    (["issuer.signing.algorithm=HS256"], "at '/issuer/signing/algorithm': value must be one of 'RS256', 'ES256'"),
    (["issuer.signing.rotationPeriod=30d"], "at '/issuer/signing/rotationPeriod': '30d' does not match pattern"),
    (["replicaz=2"], "additional properties 'replicaz' not allowed"),
    (["watchNamespaces={Team-A}"], "at '/watchNamespaces/0': 'Team-A' does not match pattern"),
    (["watchNamespaces={team-a,team-a}"], "at '/watchNamespaces': items at 0 and 1 are equal"),
    (["exchange.qps=0"], "at '/exchange/qps'"),
    (["kubeApi.qps=-1"], "at '/kubeApi/qps': minimum: got -1, want 0"),
    (["kubeApi.burst=0"], "at '/kubeApi/burst': minimum: got 0, want 1"),
    (["exchange.burst=0"], "at '/exchange/burst': minimum: got 0, want 1"),
    (["exchange.concurrency=0"], "at '/exchange/concurrency': minimum: got 0, want 1"),
    (["issuer.urll=https://x.example.com"], "at '/issuer': additional properties 'urll' not allowed"),
    (["issuer.allowedNamespaces.selector.matchLabel.a=b"], "additional properties 'matchLabel' not allowed"),
    (["replicaCount=3", "leaderElection.enabled=false"], "leaderElection.enabled=false needs replicaCount=1"),
    (["tls.enabled=true"], "tls.secretName is required when tls.enabled is true"),
    (["ingress.enabled=true"], "ingress.host is required when ingress.enabled is true"),
    (["networkPolicy.enabled=true"], "networkPolicy.apiServer.cidrs is required when networkPolicy.enabled is true"),
    (["podDisruptionBudget.minAvailable=2"], "podDisruptionBudget.minAvailable must be less than replicaCount"),
    (["serviceAccount.create=false"], "serviceAccount.name is required when serviceAccount.create is false"),
    (["pods.port=443"], "at '/pods/port': minimum: got 443, want 1,024"),
    (["pods.port=8443"], "pods.port must differ from http.port"),
    (["pods.tokenRequest.qps=0"], "at '/pods/tokenRequest/qps'"),
    (["pods.tokenRequest.burst=0"], "at '/pods/tokenRequest/burst': minimum: got 0, want 1"),
    (["pods.tokenRequest.audience="], "at '/pods/tokenRequest/audience'"),
    (["pods.webhook.timeoutSeconds=31"], "at '/pods/webhook/timeoutSeconds': maximum: got 31, want 30"),
    (["pods.webhook.timeoutSeconds=0"], "at '/pods/webhook/timeoutSeconds': minimum: got 0, want 1"),
    (["pods.enable=false"], "at '/pods': additional properties 'enable' not allowed"),
    (["pods.certManager.issuerRef.nam=ca"], "at '/pods/certManager/issuerRef': additional properties 'nam' not allowed"),
    (
        ["pods.certManager.enabled=true", "pods.certManager.issuerRef.kind=ClusterIssuer"],
        "pods.certManager.issuerRef.name is required when pods.certManager.issuerRef is set",
    ),
    (["prometheusRule.alerts.refreshFailing.attempts=0"], "at '/prometheusRule/alerts/refreshFailing/attempts': minimum: got 0, want 1"),
    (["prometheusRule.alerts.leaderMissing.for=5min"], "at '/prometheusRule/alerts/leaderMissing/for': '5min' does not match pattern"),
    (["prometheusRule.alerts.renewalOverdue.graceSeconds=-1"], "at '/prometheusRule/alerts/renewalOverdue/graceSeconds': minimum: got -1, want 0"),
    (["prometheusRule.alerts.renewalOverdu.for=1m"], "at '/prometheusRule/alerts': additional properties 'renewalOverdu' not allowed"),
    (["grafanaDashboard.labelValue=a b"], "at '/grafanaDashboard/labelValue'"),
    (["grafanaDashboard.label=-bad"], "at '/grafanaDashboard/label'"),
    (
        ["issuer.create=true", f"issuer.url={ISSUER_URL}", "issuer.claims[0].name=sub", "issuer.claims[0].string=x"],
        'the claim name "sub" is reserved',
    ),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=["+".join(values) for values, _ in BAD_VALUES])
def test_bad_values_fail_with_a_clear_message(cluster: Cluster, values: list[str], message: str) -> None:
    args = [arg for value in values for arg in ("--set", value)]
    result = helm(cluster, "template", "fedid", str(CHART), *args, check=False)
    assert result.returncode != 0, f"{values} rendered:\n{result.stdout[:400]}"
    assert message in result.stderr, result.stderr


def test_notes_warn_when_no_issuer_is_created(cluster: Cluster) -> None:
    notes = helm(cluster, "install", "fedid", str(CHART), "-n", "fedid-system", "--dry-run=client").stdout
    assert "WARNING: no IdentityIssuer was created" in notes
    assert "kubectl wait --for=condition=Ready fid/<name> -n <namespace>" in notes


def test_notes_name_the_served_namespaces_and_warn_of_an_allowed_one_left_out(cluster: Cluster) -> None:
    def notes_of(*values: str) -> str:
        installed = helm(cluster, "install", "fedid", str(CHART), "-n", "fedid-system", "--dry-run=client", *values)
        return installed.stdout.split("\nNOTES:\n", 1)[1]

    issuer = ["--set", "issuer.create=true", "--set", "issuer.url=https://fedid.example.com",
              "--set", "issuer.allowedNamespaces.names={team-a,team-b,team-c}"]
    notes = notes_of("--set", "watchNamespaces={team-a}", *issuer)
    assert "Namespaces served (watchNamespaces): team-a. fedid never sees identities or pods in" in notes
    assert "WARNING: issuer.allowedNamespaces.names lists team-b, team-c, which watchNamespaces leaves out" in notes
    served = notes_of("--set", "watchNamespaces={team-a,team-b,team-c}", *issuer)
    assert "Namespaces served (watchNamespaces): team-a, team-b, team-c." in served
    assert "watchNamespaces leaves out" not in served
    every = notes_of(*issuer)
    assert "watchNamespaces" not in every


# --- the pod server (pods.*) -----------------------------------------------------------------------

POD_RELEASE = "fedid-chart"  # `render` names the release after its namespace


def pod_render(cluster: Cluster, *args: str) -> dict[str, dict]:
    return objects(cluster, render(cluster, POD_RELEASE, *args))


# The ClusterRole without the pod server; pods.enabled adds POD_RULES and widens the namespaces rule.
BASE_RULES = {
    ("fedid.dev", "identityissuers"): ["get", "list", "watch"],
    ("fedid.dev", "federatedidentities"): ["get", "list", "watch"],
    ("fedid.dev", "identityissuers/status"): ["patch"],
    ("fedid.dev", "federatedidentities/status"): ["patch"],
    ("", "secrets"): ["list", "watch", "create", "patch", "delete"],
    ("", "configmaps"): ["list", "watch"],
    ("", "namespaces"): ["list", "watch"],
    ("events.k8s.io", "events"): ["create", "patch"],
}
POD_RULES = {
    ("", "namespaces"): ["list", "watch", "get"],
    ("", "pods"): ["get", "list", "watch"],
    ("authentication.k8s.io", "tokenreviews"): ["create"],
}
WEBHOOK_RULE = {("admissionregistration.k8s.io", f"mutatingwebhookconfigurations={POD_RELEASE}"): ["get", "patch"]}
POD_ARGS = ("--pod-", "--webhook-configuration", "--token-request-")


def test_webhook_configuration_renders_as_documented(cluster: Cluster) -> None:
    rendered = pod_render(cluster, "--set", "pods.webhook.timeoutSeconds=7")
    webhook = rendered[f"MutatingWebhookConfiguration/{POD_RELEASE}"]
    assert "annotations" not in webhook["metadata"], "without cert-manager fedid sets the caBundle itself"
    assert webhook["metadata"]["labels"]["app.kubernetes.io/instance"] == POD_RELEASE
    assert webhook["webhooks"] == [
        {
            "name": "pods.fedid.dev",
            # No caBundle: fedid patches its generated CA in (Helm keeps that field on upgrade).
            "clientConfig": {"service": {"name": f"{POD_RELEASE}-pods", "namespace": POD_RELEASE, "path": "/mutate", "port": 443}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            # Pods without the label never reach fedid.
            "objectSelector": {"matchExpressions": [{"key": "fedid.dev/identity", "operator": "Exists"}]},
            "matchPolicy": "Equivalent",
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 7,
        }
    ]
    service = rendered[f"Service/{POD_RELEASE}-pods"]["spec"]
    assert service["type"] == "ClusterIP"
    assert service["selector"] == {"app.kubernetes.io/name": "fedid", "app.kubernetes.io/instance": POD_RELEASE}
    assert service["ports"] == [{"name": "https", "port": 443, "targetPort": "pods", "protocol": "TCP", "appProtocol": "https"}]
    # The ClusterRole: exactly the documented rules, the webhook configuration by name only.
    assert cluster_rules(rendered, POD_RELEASE) == {**BASE_RULES, **POD_RULES, **WEBHOOK_RULE}
    # The values reach the pod server's flags.
    container = container_of(
        pod_render(
            cluster, "--set", "pods.port=10443",
            "--set-json", 'pods.tokenRequest={"audience": "ci.example.com/fedid", "qps": 0.5, "burst": 3}',
        ),
        POD_RELEASE,
    )
    assert [arg for arg in container["args"] if arg.startswith(POD_ARGS)] == [
        "--pod-server-addr=0.0.0.0:10443",
        f"--pod-tls-hosts={POD_RELEASE}-pods.{POD_RELEASE}.svc,{POD_RELEASE}-pods.{POD_RELEASE}.svc.cluster.local",
        f"--pod-tls-secret-name={POD_RELEASE}-pod-server-tls",
        f"--webhook-configuration={POD_RELEASE}",
        f"--pod-token-url=https://{POD_RELEASE}-pods.{POD_RELEASE}.svc/v1/token",
        "--token-request-audience=ci.example.com/fedid",
        "--token-request-qps=0.5",
        "--token-request-burst=3",
    ]
    assert container["ports"][1] == {"name": "pods", "containerPort": 10443, "protocol": "TCP"}


def test_without_pods_no_pod_server_webhook_or_pod_rights(cluster: Cluster) -> None:
    values = ["--set", "pods.enabled=false", *CERT_MANAGER, "--set", "networkPolicy.enabled=true", "--set", "networkPolicy.apiServer.cidrs={10.0.0.1/32}"]
    rendered = pod_render(cluster, *values)
    assert not [key for key in rendered if key.startswith(("MutatingWebhookConfiguration/", "Certificate/", "Issuer/"))]
    assert f"Service/{POD_RELEASE}-pods" not in rendered
    container = container_of(rendered, POD_RELEASE)
    assert not [arg for arg in container["args"] if arg.startswith(POD_ARGS)], container["args"]
    assert [port["name"] for port in container["ports"]] == ["http"]
    assert "volumes" not in rendered[f"Deployment/{POD_RELEASE}"]["spec"]["template"]["spec"]
    # No pods, TokenReviews or webhook configurations; no get on namespaces.
    assert cluster_rules(rendered, POD_RELEASE) == BASE_RULES
    ingress = rendered[f"NetworkPolicy/{POD_RELEASE}"]["spec"]["ingress"]
    assert [rule["ports"][0]["port"] for rule in ingress] == ["http"]
    notes = helm(cluster, "install", POD_RELEASE, str(CHART), "-n", POD_RELEASE, "--dry-run=client", *values).stdout
    assert "Per-pod tokens" not in notes


def test_cert_manager_issues_the_pod_server_certificate(cluster: Cluster) -> None:
    rendered = pod_render(cluster, *CERT_MANAGER)
    pods = f"{POD_RELEASE}-pods"
    issuer = {"group": "cert-manager.io", "kind": "Issuer"}
    # The chart's own CA: self-signed Issuer -> CA Certificate -> CA Issuer -> serving Certificate.
    assert rendered[f"Issuer/{pods}-selfsigned"]["spec"] == {"selfSigned": {}}
    ca = rendered[f"Certificate/{pods}-ca"]["spec"]
    assert ca["isCA"] is True and ca["secretName"] == f"{pods}-ca" and ca["duration"] == "87600h"
    assert ca["issuerRef"] == {"name": f"{pods}-selfsigned", **issuer}
    assert rendered[f"Issuer/{pods}-ca"]["spec"] == {"ca": {"secretName": f"{pods}-ca"}}
    serving = rendered[f"Certificate/{pods}"]["spec"]
    assert serving["secretName"] == f"{pods}-tls"
    assert serving["dnsNames"] == [f"{pods}.{POD_RELEASE}.svc", f"{pods}.{POD_RELEASE}.svc.cluster.local"]
    assert serving["issuerRef"] == {"name": f"{pods}-ca", **issuer}
    assert "server auth" in serving["usages"]
    for key in ("Issuer/", "Certificate/"):
        assert all(obj["metadata"]["namespace"] == POD_RELEASE for name, obj in rendered.items() if name.startswith(key))
    # cert-manager's cainjector sets the webhook's caBundle from that Certificate.
    webhook = rendered[f"MutatingWebhookConfiguration/{POD_RELEASE}"]
    assert webhook["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"{POD_RELEASE}/{pods}"}
    assert "caBundle" not in webhook["webhooks"][0]["clientConfig"]
    # fedid reads the mounted Secret, and never touches the webhook configuration.
    pod = rendered[f"Deployment/{POD_RELEASE}"]["spec"]["template"]["spec"]
    container = container_of(rendered, POD_RELEASE)
    assert [arg for arg in container["args"] if arg.startswith(POD_ARGS)] == [
        "--pod-server-addr=0.0.0.0:9443",
        f"--pod-tls-hosts={pods}.{POD_RELEASE}.svc,{pods}.{POD_RELEASE}.svc.cluster.local",
        "--pod-tls-cert-file=/etc/fedid/pods-tls/tls.crt",
        "--pod-tls-key-file=/etc/fedid/pods-tls/tls.key",
        "--pod-tls-ca-file=/etc/fedid/pods-tls/ca.crt",
        f"--pod-token-url=https://{pods}.{POD_RELEASE}.svc/v1/token",
        "--token-request-audience=fedid.dev/token-request",
        "--token-request-qps=1",
        "--token-request-burst=10",
    ]
    assert container["volumeMounts"] == [{"name": "pods-tls", "mountPath": "/etc/fedid/pods-tls", "readOnly": True}]
    assert pod["volumes"] == [{"name": "pods-tls", "secret": {"secretName": f"{pods}-tls", "defaultMode": 0o440}}]
    assert cluster_rules(rendered, POD_RELEASE) == {**BASE_RULES, **POD_RULES}

    # With the issuer's own certificate too (tls.enabled), both Secrets are mounted.
    both = pod_render(cluster, *CERT_MANAGER, "--set", "tls.enabled=true", "--set", "tls.secretName=fedid-tls")
    assert [volume["name"] for volume in both[f"Deployment/{POD_RELEASE}"]["spec"]["template"]["spec"]["volumes"]] == ["tls", "pods-tls"]
    assert [mount["mountPath"] for mount in container_of(both, POD_RELEASE)["volumeMounts"]] == ["/etc/fedid/tls", "/etc/fedid/pods-tls"]

    # A given issuer signs the serving certificate; the chart creates no CA.
    given = pod_render(cluster, *CERT_MANAGER_ISSUER)
    assert not [key for key in given if key.startswith("Issuer/")]
    assert [key for key in given if key.startswith("Certificate/")] == [f"Certificate/{pods}"]
    assert given[f"Certificate/{pods}"]["spec"]["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}


# The configurations whose Deployment args must parse: fedid rejects an unknown flag, or one
# without the flags it requires (the pod server's three files), before it contacts the cluster.
ARG_CONFIGURATIONS = {
    "defaults": [],
    "everything": EVERYTHING,
    "cert-manager": [*EVERYTHING, *CERT_MANAGER],
    "no-pods": ["--set", "pods.enabled=false"],
    "single": ["--set", "replicaCount=1", "--set", "leaderElection.enabled=false"],
    "rollout": ["--set", "rollout.enabled=true"],
    "watch-namespaces": ["--set", "watchNamespaces={team-a,team-b}", "--set", "rollout.enabled=true"],
}


def test_key_ring_protection_renders_only_when_enabled_with_its_allowed_users(cluster: Cluster) -> None:
    assert not [key for key in pod_render(cluster) if key.startswith("ValidatingAdmissionPolicy")]
    rendered = pod_render(cluster, "--set", "keyRingProtection.enabled=true",
                          "--set", "keyRingProtection.allowedUsers={system:serviceaccount:backup:restore}")
    policy = rendered[f"ValidatingAdmissionPolicy/{POD_RELEASE}-key-rings"]["spec"]
    assert policy["failurePolicy"] == "Fail"
    assert policy["matchConstraints"]["resourceRules"][0]["operations"] == ["UPDATE", "DELETE"]
    expression = policy["validations"][0]["expression"]
    for user in (f"system:serviceaccount:{POD_RELEASE}:{POD_RELEASE}", "system:serviceaccount:backup:restore",
                 "system:serviceaccount:kube-system:generic-garbage-collector"):
        assert f"'{user}'" in expression, expression
    binding = rendered[f"ValidatingAdmissionPolicyBinding/{POD_RELEASE}-key-rings"]["spec"]
    assert binding["validationActions"] == ["Deny"]
    assert binding["matchResources"]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": POD_RELEASE}}
    assert binding["matchResources"]["objectSelector"] == {"matchExpressions": [{"key": "fedid.dev/issuer", "operator": "Exists"}]}


def test_rollout_adds_the_flag_and_only_a_patch_on_workloads(cluster: Cluster) -> None:
    """rollout.enabled turns on --rollout and adds one rule: patch (no get, list or watch) on
    the three workload kinds; off by default, with neither."""
    default = pod_render(cluster, "--set", "pods.enabled=false")
    assert "--rollout=false" in container_of(default, POD_RELEASE)["args"]
    assert cluster_rules(default, POD_RELEASE) == BASE_RULES
    enabled = pod_render(cluster, "--set", "pods.enabled=false", "--set", "rollout.enabled=true")
    assert "--rollout=true" in container_of(enabled, POD_RELEASE)["args"]
    assert cluster_rules(enabled, POD_RELEASE) == {
        **BASE_RULES,
        **{("apps", kind): ["patch"] for kind in ("deployments", "statefulsets", "daemonsets")},
    }


def pod_render_by_namespace(cluster: Cluster, *args: str) -> dict[str, dict]:
    return objects(cluster, render(cluster, POD_RELEASE, *args), by_namespace=True)


def role_rules(role: dict) -> dict[tuple[str, str], list[str]]:
    """A Role's verbs by (API group, resource)."""
    return cluster_rules({"ClusterRole/role": role}, "role")


# What fedid needs where identities live: the ClusterRole's rules in every-namespace mode, each
# listed namespace's Role with watchNamespaces.
IDENTITY_NAMESPACE_RULES = {key: BASE_RULES[key] for key in (
    ("fedid.dev", "federatedidentities"), ("fedid.dev", "federatedidentities/status"), ("", "secrets"),
    ("", "configmaps"), ("events.k8s.io", "events"))}


def test_watch_namespaces_moves_the_namespaced_rules_into_a_role_per_namespace(cluster: Cluster) -> None:
    """watchNamespaces passes --watch-namespaces, leaves the ClusterRole only cluster-scoped rules
    (the listed namespaces by name), gives each listed namespace a Role with the rest, the
    release namespace the key rings' list, watch and create, `default` the issuers' Events, and
    limits the webhook to the listed namespaces."""
    rendered = pod_render_by_namespace(cluster, "--set", "watchNamespaces={team-b,team-a}", "--set", "rollout.enabled=true")
    assert "--watch-namespaces=team-b,team-a" in container_of(rendered, POD_RELEASE)["args"]
    assert cluster_rules(rendered, POD_RELEASE) == {
        ("fedid.dev", "identityissuers"): ["get", "list", "watch"],
        ("fedid.dev", "identityissuers/status"): ["patch"],
        ("", "namespaces=team-b,team-a"): ["list", "watch", "get"],
        ("authentication.k8s.io", "tokenreviews"): ["create"],
        **WEBHOOK_RULE,
    }
    workloads = {("apps", kind): ["patch"] for kind in ("deployments", "statefulsets", "daemonsets")}
    for namespace in ("team-a", "team-b"):
        role = rendered[f"Role/{namespace}/{POD_RELEASE}-identities"]
        assert role_rules(role) == {**IDENTITY_NAMESPACE_RULES, ("", "pods"): ["get", "list", "watch"], **workloads}
        binding = rendered[f"RoleBinding/{namespace}/{POD_RELEASE}-identities"]
        assert binding["roleRef"]["name"] == f"{POD_RELEASE}-identities"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": POD_RELEASE, "namespace": POD_RELEASE}]
    own = [rule for rule in rendered[f"Role/{POD_RELEASE}/{POD_RELEASE}"]["rules"] if rule["resources"] == ["secrets"]]
    assert [rule["verbs"] for rule in own] == [["get", "update"], ["list", "watch", "create"]]
    assert role_rules(rendered[f"Role/default/{POD_RELEASE}-issuer-events"]) == {("events.k8s.io", "events"): ["create", "patch"]}
    webhook = rendered[f"MutatingWebhookConfiguration/{POD_RELEASE}"]["webhooks"][0]
    assert webhook["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-b", "team-a"]}]
    }
    # The release namespace and default listed: their Roles are separate objects, and default's
    # identity Role covers the issuers' Events.
    both = pod_render_by_namespace(cluster, "--set", f"watchNamespaces={{{POD_RELEASE},default}}", "--set", "pods.enabled=false")
    assert f"Role/{POD_RELEASE}/{POD_RELEASE}" in both and f"Role/{POD_RELEASE}/{POD_RELEASE}-identities" in both
    assert f"Role/default/{POD_RELEASE}-issuer-events" not in both
    assert role_rules(both[f"Role/default/{POD_RELEASE}-identities"]) == IDENTITY_NAMESPACE_RULES
    assert cluster_rules(both, POD_RELEASE)[("", f"namespaces={POD_RELEASE},default")] == ["list", "watch"]
    # Without the value: no Role outside the release namespace, no namespaceSelector.
    default = pod_render_by_namespace(cluster)
    assert [key for key in default if key.startswith("Role/")] == [f"Role/{POD_RELEASE}/{POD_RELEASE}"]
    assert "namespaceSelector" not in default[f"MutatingWebhookConfiguration/{POD_RELEASE}"]["webhooks"][0]
    assert not [arg for arg in container_of(default, POD_RELEASE)["args"] if arg.startswith("--watch-namespaces")]


@pytest.mark.parametrize("values", ARG_CONFIGURATIONS.values(), ids=ARG_CONFIGURATIONS.keys())
def test_fedid_accepts_the_deployment_args(cluster: Cluster, tmp_path: Path, values: list[str]) -> None:
    binary = fedid_binary()
    assert binary.is_file(), f"{binary} is missing: build fedid or set FEDID_BIN"
    container = container_of(pod_render(cluster, *values), POD_RELEASE)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "missing")}
    env.update({var["name"]: var.get("value", "fedid-0") for var in container["env"]})
    result = subprocess.run([str(binary), *container["args"]], capture_output=True, text=True, env=env, timeout=60)
    # Past the parser, fedid stops at the missing kubeconfig (exit 1); a usage error exits 2.
    assert result.returncode == 1 and "failed to configure the Kubernetes client" in result.stderr, (
        f"fedid {' '.join(container['args'])} exited {result.returncode}:\n{result.stderr[-2000:]}"
    )


# --- a real install ----------------------------------------------------------------------------


def test_install_creates_every_object(cluster: Cluster, release: dict) -> None:
    ns, name = release["namespace"], release["name"]
    for crd in ("identityissuers.fedid.dev", "federatedidentities.fedid.dev"):
        found = get_json(cluster, "crd", crd, "--show-managed-fields")
        assert found["status"]["acceptedNames"]["kind"]
        if not release["crds_existed"]:
            assert "helm" in {field["manager"] for field in found["metadata"]["managedFields"]}, f"helm did not install {crd}"
    for kind in ("serviceaccount", "role", "rolebinding", "service", "deployment", "poddisruptionbudget"):
        labels = get_json(cluster, kind, name, "-n", ns)["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == name and labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/name"] == "fedid" and labels["helm.sh/chart"] == "fedid-0.1.0"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
    binding = get_json(cluster, "clusterrolebinding", name)
    assert binding["roleRef"]["name"] == name
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
    assert get_json(cluster, "rolebinding", name, "-n", ns)["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": ns}]

    service = get_json(cluster, "service", name, "-n", ns)["spec"]
    assert [(port["name"], port["port"], port["targetPort"]) for port in service["ports"]] == [("http", 80, "http")]
    assert service["selector"] == {"app.kubernetes.io/name": "fedid", "app.kubernetes.io/instance": name}
    pdb = get_json(cluster, "poddisruptionbudget", name, "-n", ns)["spec"]
    assert pdb["minAvailable"] == 1 and pdb["selector"]["matchLabels"] == service["selector"]

    # The pod server (pods.enabled by default): its Service on 443 to the pods' port `pods`, and
    # the webhook calling it. The apiserver accepted the webhook without a caBundle: fedid sets
    # it once it runs (no pod runs here).
    pods = get_json(cluster, "service", f"{name}-pods", "-n", ns)
    assert pods["metadata"]["labels"]["app.kubernetes.io/instance"] == name
    assert pods["spec"]["type"] == "ClusterIP" and pods["spec"]["selector"] == service["selector"]
    assert [(port["name"], port["port"], port["targetPort"]) for port in pods["spec"]["ports"]] == [("https", 443, "pods")]
    webhook = get_json(cluster, "mutatingwebhookconfiguration", name)
    assert webhook["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert "cert-manager.io/inject-ca-from" not in (webhook["metadata"].get("annotations") or {})
    (hook,) = webhook["webhooks"]
    assert hook["name"] == "pods.fedid.dev"
    assert hook["clientConfig"] == {"service": {"name": f"{name}-pods", "namespace": ns, "path": "/mutate", "port": 443}}
    assert hook["objectSelector"] == {"matchExpressions": [{"key": "fedid.dev/identity", "operator": "Exists"}]}
    assert hook["failurePolicy"] == "Fail" and hook["timeoutSeconds"] == 5

    issuer = get_json(cluster, "identityissuer", release["issuer"])
    assert issuer["metadata"]["annotations"]["fedid.dev/default-issuer"] == "true"
    assert issuer["spec"]["issuerURL"] == ISSUER_URL
    assert issuer["spec"]["allowedNamespaces"]["names"] == ["ci-web"]
    assert issuer["spec"]["tokenLifetime"] == {"default": "1h", "maximum": "24h"}

    notes = release["notes"]
    assert f"issuer URL:     {ISSUER_URL}" in notes
    assert f"discovery URL:  {ISSUER_URL}/.well-known/openid-configuration" in notes
    assert "kubectl wait --for=condition=Ready fid/deploy -n <namespace>" in notes
    assert "kubectl get identityissuer" in notes and "WARNING" not in notes
    assert f"webhook {name} prepares pods labelled fedid.dev/identity" in notes
    assert f"https://{name}-pods.{ns}.svc/v1/token" in notes and f"Secret {name}-pod-server-tls" in notes


def test_deployment_runs_fedid_as_documented(cluster: Cluster, release: dict) -> None:
    ns, name = release["namespace"], release["name"]
    deployment = get_json(cluster, "deployment", name, "-n", ns)["spec"]
    assert deployment["replicas"] == 2
    pod = deployment["template"]["spec"]
    assert pod["serviceAccountName"] == name
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/fedid-dev/fedid:0.1.0"
    assert "command" not in container, "the image's entrypoint /fedid runs"
    assert container["args"] == [
        "run",
        "--http-addr=0.0.0.0:8443",
        "--log-format=text",
        "--concurrency=16",
        "--kube-api-qps=0",
        "--kube-api-burst=100",
        "--exchange-qps=20",
        "--exchange-burst=40",
        "--exchange-concurrency=16",
        "--rollout=false",
        "--leader-election=true",
        "--leader-election-lease-name=fedid-leader",
        # The pod server, for its Service's names, with the certificate fedid generates and
        # patches into the webhook's caBundle.
        "--pod-server-addr=0.0.0.0:9443",
        f"--pod-tls-hosts={name}-pods.{ns}.svc,{name}-pods.{ns}.svc.cluster.local",
        f"--pod-tls-secret-name={name}-pod-server-tls",
        f"--webhook-configuration={name}",
        f"--pod-token-url=https://{name}-pods.{ns}.svc/v1/token",
        "--token-request-audience=fedid.dev/token-request",
        "--token-request-qps=1",
        "--token-request-burst=10",
    ]
    env = {variable["name"]: variable for variable in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["RUST_LOG"]["value"] == "info"
    assert container["ports"] == [
        {"name": "http", "containerPort": 8443, "protocol": "TCP"},
        {"name": "pods", "containerPort": 9443, "protocol": "TCP"},
    ]
    assert "volumes" not in pod and "volumeMounts" not in container, "the generated certificate is read from its Secret"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTP"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTP"}
    assert container["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# (verb, resource, namespace: "own" | "other" | "all" | None for cluster-scoped, allowed[, name])
WEBHOOKS = "mutatingwebhookconfigurations.admissionregistration.k8s.io"
RIGHTS = [
    # Identity Secrets anywhere: found through a label-selected list/watch, created, then applied.
    # RBAC cannot restrict by label, so list and watch cover every Secret (see the next test).
    ("list", "secrets", "all", True),
    ("watch", "secrets", "all", True),
    ("create", "secrets", "other", True),
    ("patch", "secrets", "other", True),
    ("get", "secrets", "other", False),
    ("update", "secrets", "other", False),
    # A revoked identity's Secret and a finished pod's Secret are deleted at once; RBAC cannot
    # restrict delete to fedid's Secrets, so it covers every Secret, key rings included. One at a
    # time only.
    ("delete", "secrets", "other", True),
    ("delete", "secrets", "own", True),
    ("deletecollection", "secrets", "other", False),
    # Key rings (and the pod server's generated certificate) in its own namespace: read and replaced.
    ("get", "secrets", "own", True),
    ("update", "secrets", "own", True),
    # The custom resources: read everywhere, only their status written.
    ("get", "identityissuers.fedid.dev", None, True),
    ("watch", "federatedidentities.fedid.dev", "all", True),
    ("patch", "identityissuers.fedid.dev/status", None, True),
    ("patch", "federatedidentities.fedid.dev/status", "other", True),
    ("patch", "identityissuers.fedid.dev", None, False),
    ("update", "federatedidentities.fedid.dev", "other", False),
    ("delete", "federatedidentities.fedid.dev", "other", False),
    # Namespaces' labels decide selector policies: watched (metadata only); the token endpoint
    # reads a requesting pod's namespace (pods.enabled). Never written.
    ("list", "namespaces", None, True),
    ("watch", "namespaces", None, True),
    ("get", "namespaces", None, True),
    ("update", "namespaces", None, False),
    ("patch", "namespaces", None, False),
    ("create", "events.events.k8s.io", "other", True),
    ("patch", "events.events.k8s.io", "other", True),
    ("delete", "events.events.k8s.io", "other", False),
    # CA bundles for exchanges: listed and watched (by label) everywhere, never read one by one.
    ("list", "configmaps", "all", True),
    ("watch", "configmaps", "other", True),
    ("get", "configmaps", "other", False),
    ("create", "configmaps", "other", False),
    # Static files in its own namespace only.
    ("get", "configmaps", "own", True),
    ("patch", "configmaps", "own", True),
    ("create", "configmaps", "own", True),
    ("patch", "configmaps", "other", False),
    ("delete", "configmaps", "own", False),
    # The leader Lease in its own namespace only.
    ("get", "leases.coordination.k8s.io", "own", True),
    ("create", "leases.coordination.k8s.io", "own", True),
    ("update", "leases.coordination.k8s.io", "own", True),
    ("delete", "leases.coordination.k8s.io", "own", False),
    ("create", "leases.coordination.k8s.io", "other", False),
    # Opted-in pods: watched everywhere (RBAC cannot restrict by label), read one by one by the
    # token endpoint, never written.
    ("list", "pods", "all", True),
    ("watch", "pods", "all", True),
    ("get", "pods", "other", True),
    ("create", "pods", "own", False),
    ("patch", "pods", "other", False),
    ("update", "pods", "other", False),
    ("delete", "pods", "other", False),
    ("create", "pods/exec", "other", False),
    # The token endpoint's TokenReviews (cluster-scoped, create only).
    ("create", "tokenreviews.authentication.k8s.io", None, True),
    ("create", "subjectaccessreviews.authorization.k8s.io", None, False),
    # Its own webhook configuration only: read, and the generated CA patched in.
    ("get", WEBHOOKS, None, True, RELEASE),
    ("patch", WEBHOOKS, None, True, RELEASE),
    ("update", WEBHOOKS, None, False, RELEASE),
    ("delete", WEBHOOKS, None, False, RELEASE),
    ("patch", WEBHOOKS, None, False, "another-webhook"),
    ("get", WEBHOOKS, None, False, "another-webhook"),
    ("list", WEBHOOKS, None, False),
    ("create", WEBHOOKS, None, False),
    ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io", None, False, RELEASE),
    # Workloads only with rollout.enabled, which this release leaves off.
    ("patch", "deployments.apps", "other", False),
    ("get", "deployments.apps", "other", False),
    # Nothing else.
    ("create", "serviceaccounts/token", "other", False),
    ("get", "nodes", None, False),
]


def test_service_account_has_exactly_the_documented_rights(cluster: Cluster, release: dict) -> None:
    ns = release["namespace"]
    subject = f"system:serviceaccount:{ns}:{release['name']}"
    assert release["name"] == RELEASE, "the named rights are the release's"
    wrong = []
    for verb, resource, where, allowed, *name in RIGHTS:
        resource, _, subresource = resource.partition("/")
        scope = {"own": ["-n", ns], "other": ["-n", "default"], "all": ["--all-namespaces"], None: []}[where]
        extra = [f"--subresource={subresource}"] if subresource else []
        # A named object is asked for as TYPE/NAME (rules with resourceNames).
        target = f"{resource}/{name[0]}" if name else resource
        result = cluster.kubectl("auth", "can-i", verb, target, *extra, *scope, f"--as={subject}", check=False)
        answer = result.stdout.strip()
        assert answer in ("yes", "no"), f"can-i {verb} {target}: {result.stdout} {result.stderr}"
        if (answer == "yes") != allowed:
            wrong.append(f"{verb} {target}{'/' + subresource if subresource else ''} ({where}): {answer}")
    assert not wrong, "rights differ from the documented ones:\n" + "\n".join(wrong)


def test_can_i_list_is_exactly_the_documented_table(cluster: Cluster, release: dict) -> None:
    subject = f"system:serviceaccount:{release['namespace']}:{release['name']}"
    table = documented_rights(CLUSTER_WIDE_RIGHTS, RELEASE)
    cluster_wide = table["cluster"]
    assert ("secrets", "", "delete") in cluster_wide and ("pods", "", "watch") in cluster_wide
    assert can_i_list(cluster, subject, "default") == cluster_wide
    assert can_i_list(cluster, subject, release["namespace"]) == cluster_wide | table["release namespace"]


def test_service_account_can_read_every_secret_by_listing(cluster: Cluster, release: dict, namespace: str) -> None:
    """The READMEs' warning, checked the way a sceptic would: the cluster-wide list right (which
    RBAC cannot narrow to fedid's labels) returns a foreign Secret's data, although a GET of the
    same Secret is forbidden; deleting it is allowed (pods.enabled: finished pods' Secrets), as
    the READMEs say too."""
    subject = f"system:serviceaccount:{release['namespace']}:{release['name']}"
    name, value = "not-fedids", f"known-{uuid.uuid4().hex}"
    # An ordinary Secret in another namespace, without any fedid label.
    cluster.kubectl("create", "secret", "generic", name, "-n", namespace, f"--from-literal=password={value}")

    can_list = cluster.kubectl("auth", "can-i", "list", "secrets", "--all-namespaces", f"--as={subject}", check=False)
    assert can_list.stdout.strip() == "yes", can_list.stdout + can_list.stderr

    listed = json.loads(cluster.kubectl("get", "secrets", "-A", "-o", "json", f"--as={subject}").stdout)["items"]
    [found] = [s for s in listed if s["metadata"]["namespace"] == namespace and s["metadata"]["name"] == name]
    assert not any(label.startswith("fedid.dev/") for label in found["metadata"].get("labels") or {})
    assert base64.b64decode(found["data"]["password"]).decode() == value, "the list did not return the data"

    got = cluster.kubectl("get", "secret", name, "-n", namespace, f"--as={subject}", check=False)
    assert got.returncode != 0 and "Forbidden" in got.stderr, got.stdout + got.stderr
    # The apiserver authorizes the delete (a server-side dry run, so nothing is deleted).
    deleted = cluster.kubectl("delete", "secret", name, "-n", namespace, "--dry-run=server", f"--as={subject}", check=False)
    assert deleted.returncode == 0 and f'secret "{name}" deleted' in deleted.stdout, deleted.stdout + deleted.stderr
    assert deleted.stdout.strip().endswith("(server dry run)"), deleted.stdout
    # Still there (checked as the admin).
    assert get_json(cluster, "secret", name, "-n", namespace)["metadata"]["name"] == name


def test_service_account_can_read_every_configmap_by_listing(cluster: Cluster, release: dict, namespace: str) -> None:
    """The same for ConfigMaps (the CA-bundle watch): a real list as the ServiceAccount returns a
    foreign, unlabelled ConfigMap's data; a GET or an update of it is forbidden."""
    subject = f"system:serviceaccount:{release['namespace']}:{release['name']}"
    name, value = "not-fedids-either", f"known-{uuid.uuid4().hex}"
    cluster.kubectl("create", "configmap", name, "-n", namespace, f"--from-literal=setting={value}")
    listed = json.loads(cluster.kubectl("get", "configmaps", "-A", "-o", "json", f"--as={subject}").stdout)["items"]
    [found] = [c for c in listed if c["metadata"]["namespace"] == namespace and c["metadata"]["name"] == name]
    assert found["data"]["setting"] == value, "the list did not return the data"
    got = cluster.kubectl("get", "configmap", name, "-n", namespace, f"--as={subject}", check=False)
    assert got.returncode != 0 and "Forbidden" in got.stderr, got.stdout + got.stderr
    patched = cluster.kubectl("label", "configmap", name, "-n", namespace, "x=y", f"--as={subject}", check=False)
    assert patched.returncode != 0 and "Forbidden" in patched.stderr, patched.stdout + patched.stderr


def test_pod_server_runs_with_the_chart_rights(cluster: Cluster, crds: None) -> None:
    """`fedid run` with the chart's pod server flags, out of cluster as the chart's ServiceAccount
    (no pod runs here): it generates its certificate into the release namespace, patches the CA
    into the chart's webhook configuration, serves the Service's names with it, and watches
    pods, with no request forbidden."""
    name = ns = f"fedid-pods-{RUN}"
    workdir = Path(tempfile.mkdtemp(prefix="fedid-chart-pods-"))
    kubeconfig = install_chart_service_account(cluster, ns, workdir, release=name, pods=True)
    try:
        (container,) = get_json(cluster, "deployment", name, "-n", ns)["spec"]["template"]["spec"]["containers"]
        port = free_port()
        pod_args = [
            f"--pod-server-addr=127.0.0.1:{port}" if arg.startswith("--pod-server-addr=") else arg
            for arg in container["args"]
            if arg.startswith(POD_ARGS)
        ]
        assert f"--webhook-configuration={name}" in pod_args
        operator = Operator(cluster=cluster, binary=fedid_binary(), workdir=workdir, namespace=ns, name="pods",
                            kubeconfig=kubeconfig, extra_args=["--leader-election=false", *pod_args])
        operator.start()
        try:
            def generated() -> dict | None:
                found = cluster.kubectl("get", "secret", f"{name}-pod-server-tls", "-n", ns, "-o", "json", check=False)
                return json.loads(found.stdout) if found.returncode == 0 else None

            secret = wait_for("the generated Secret", generated, timeout=30)
            assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}

            def patched() -> bool:
                (hook,) = get_json(cluster, "mutatingwebhookconfiguration", name)["webhooks"]
                return hook["clientConfig"].get("caBundle") == secret["data"]["ca.crt"]

            wait_for(f"the generated CA in mutatingwebhookconfiguration/{name}", patched, timeout=30)

            # The pod server answers over TLS that verifies for the Service's name with that CA: a
            # token request without a bearer token is refused as an OAuth client error.
            context = ssl.create_default_context(cadata=base64.b64decode(secret["data"]["ca.crt"]).decode())
            host = f"{name}-pods.{ns}.svc"
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(f"POST /v1/token HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
                reply = b""
                while chunk := tls.recv(65536):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 401"), reply[:300]
            assert b"invalid_client" in reply, reply[:600]
        finally:
            operator.stop()
        logs = operator.logs()
        assert not re.search(r"forbidden|\b403\b", logs, flags=re.IGNORECASE), logs[-3000:]
    finally:
        helm(cluster, "uninstall", name, "-n", ns, "--wait", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# --- every object, validated by the apiserver -----------------------------------------------


def test_every_object_passes_server_side_dry_run(cluster: Cluster, crds: None, namespace: str) -> None:
    for crd in (SERVICE_MONITOR_CRD, PROMETHEUS_RULE_CRD):
        name = crd["metadata"]["name"]
        if cluster.kubectl("get", "crd", name, check=False).returncode != 0:
            cluster.kubectl("create", "-f", "-", input=json.dumps(crd))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    manifest = render(cluster, namespace, "--include-crds", *EVERYTHING)

    def dry_run() -> subprocess.CompletedProcess[str] | None:
        # A just-established CRD may not be in kubectl's discovery yet: retried until it is.
        result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-o", "json", "-f", "-", input=manifest, check=False)
        return result if result.returncode == 0 else None

    result = wait_for("the server-side dry-run of every object", dry_run, timeout=30)
    objects = {f"{item['kind']}/{item['metadata']['name']}": item for item in json.loads(result.stdout)["items"]}
    release = namespace
    assert set(objects) == {
        "CustomResourceDefinition/identityissuers.fedid.dev",
        "CustomResourceDefinition/federatedidentities.fedid.dev",
        f"ServiceAccount/{release}",
        f"ClusterRole/{release}",
        f"ClusterRoleBinding/{release}",
        f"Role/{release}",
        f"RoleBinding/{release}",
        f"Service/{release}",
        f"Deployment/{release}",
        f"PodDisruptionBudget/{release}",
        f"Ingress/{release}",
        f"NetworkPolicy/{release}",
        f"ServiceMonitor/{release}",
        f"PrometheusRule/{release}",
        f"ConfigMap/{release}-dashboard",
        f"IdentityIssuer/e2e-everything-{RUN}",
        f"Service/{release}-pods",
        f"MutatingWebhookConfiguration/{release}",
    }
    # The server applied its defaults and the CRD's: the issuer is what the values asked for.
    issuer = objects[f"IdentityIssuer/e2e-everything-{RUN}"]["spec"]
    assert issuer["signing"]["algorithm"] == "ES256" and issuer["signing"]["rotationPeriod"] == "720h"
    assert issuer["allowedNamespaces"] == {"all": False, "names": ["ci-web"], "selector": {"matchLabels": {"fedid.dev/ci": "enabled"}}}
    assert issuer["claims"] == [{"name": "cluster", "string": "e2e"}]
    # With TLS the pods serve HTTPS: Service 443 -> the named https port, probes over HTTPS.
    service = objects[f"Service/{release}"]["spec"]["ports"]
    assert [(port["name"], port["port"], port["targetPort"]) for port in service] == [("https", 443, "https")]
    pod = objects[f"Deployment/{release}"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert {"--tls-cert-file=/etc/fedid/tls/tls.crt", "--tls-key-file=/etc/fedid/tls/tls.key"} <= set(container["args"])
    assert container["image"] == "ghcr.io/fedid-dev/fedid@sha256:" + "0" * 64
    assert pod["volumes"][0]["secret"] == {"secretName": "fedid-tls", "defaultMode": 0o440}
    assert pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == release
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]
    backend = objects[f"Ingress/{release}"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": release, "port": {"name": "https"}}
    # The pod server beside the issuer endpoint: its own port, Service and webhook, open to every
    # source in the NetworkPolicy (the API server and pods in any namespace call it).
    assert [port["name"] for port in container["ports"]] == ["https", "pods"]
    assert objects[f"Service/{release}-pods"]["spec"]["ports"][0]["targetPort"] == "pods"
    (hook,) = objects[f"MutatingWebhookConfiguration/{release}"]["webhooks"]
    assert hook["clientConfig"]["service"]["name"] == f"{release}-pods"
    policy = objects[f"NetworkPolicy/{release}"]["spec"]["ingress"]
    assert {"ports": [{"port": "pods", "protocol": "TCP"}]} in policy
    # The monitoring objects as the server stores them: identities keep their namespace label, and
    # every alert survived the PrometheusRule schema.
    assert objects[f"ServiceMonitor/{release}"]["spec"]["endpoints"][0]["honorLabels"] is True
    rules = objects[f"PrometheusRule/{release}"]["spec"]["groups"][0]["rules"]
    assert len(rules) == 8 and all(rule["expr"] and rule["annotations"]["description"] for rule in rules)
    assert json.loads(objects[f"ConfigMap/{release}-dashboard"]["data"]["fedid.json"])["uid"] == "fedid"


# --- Pod Security ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [[], ["--set", "tls.enabled=true", "--set", "tls.secretName=fedid-tls"], CERT_MANAGER],
    ids=["http", "tls", "cert-manager"],
)
def test_pod_template_meets_pod_security_restricted(cluster: Cluster, namespace: str, values: list[str]) -> None:
    # PodSecurity enforces on Pods only; for a Deployment's template it answers with warnings
    # (the warn level defaults to the enforce level), which --warnings-as-errors turns into failures.
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    deployment = render(cluster, namespace, "--show-only", "templates/deployment.yaml", *values)
    result = cluster.kubectl(
        "apply", "--dry-run=server", "--warnings-as-errors", "-n", namespace, "-f", "-", input=deployment, check=False
    )
    assert result.returncode == 0 and "PodSecurity" not in result.stderr, result.stderr

    # The same check notices a violation, so the pass above means something.
    weakened = render(cluster, namespace, "--show-only", "templates/deployment.yaml", "--set", "securityContext.allowPrivilegeEscalation=true")
    rejected = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=weakened, check=False)
    assert 'would violate PodSecurity "restricted:latest"' in rejected.stderr and "allowPrivilegeEscalation" in rejected.stderr


# --- installing without the chart's CRDs, and uninstalling ---------------------------------------


def test_install_without_crds_and_uninstall(cluster: Cluster, crds: None) -> None:
    # The CRDs were applied separately (the `crds` fixture, like `kubectl apply -f crds/`).
    name, ns, issuer = f"fedid-skip-{RUN}", f"fedid-skip-{RUN}", f"e2e-skip-{RUN}"
    helm(cluster, "install", name, str(CHART), "-n", ns, "--create-namespace", "--skip-crds", *issuer_values(issuer, "issuer.default=false"))
    try:
        assert "fedid.dev/default-issuer" not in get_json(cluster, "identityissuer", issuer)["metadata"]["annotations"]
        namespaced = ["serviceaccount", "role", "rolebinding", "service", "deployment", "poddisruptionbudget"]
        for kind in namespaced:
            get_json(cluster, kind, name, "-n", ns)
        get_json(cluster, "service", f"{name}-pods", "-n", ns)
        get_json(cluster, "mutatingwebhookconfiguration", name)

        helm(cluster, "uninstall", name, "-n", ns, "--wait")

        def gone(*args: str) -> bool:
            result = cluster.kubectl("get", *args, check=False)
            return result.returncode != 0 and "NotFound" in result.stderr

        for kind in namespaced:
            wait_for(f"{kind}/{name} to be deleted", lambda: gone(kind, name, "-n", ns))
        wait_for(f"service/{name}-pods to be deleted", lambda: gone("service", f"{name}-pods", "-n", ns))
        for args in (("clusterrole", name), ("clusterrolebinding", name), ("mutatingwebhookconfiguration", name), ("identityissuer", issuer)):
            wait_for(f"{'/'.join(args)} to be deleted", lambda: gone(*args))
        # helm never deletes CRDs (other releases' and users' resources depend on them).
        cluster.kubectl("get", "crd", "identityissuers.fedid.dev", "federatedidentities.fedid.dev")
    finally:
        helm(cluster, "uninstall", name, "-n", ns, check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# --- documentation -----------------------------------------------------------------------------


def schema_paths(node: dict, prefix: str = "") -> list[str]:
    """Every value path the schema declares, parents before children."""
    paths = []
    for key, child in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        paths.append(path)
        paths.extend(schema_paths(child, f"{path}."))
    return paths


def test_every_value_is_documented() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    declared = schema_paths(schema)
    readme = (CHART / "README.md").read_text()
    documented = re.findall(r"^\| `([A-Za-z][\w.]*)` \|", readme, flags=re.MULTILINE)
    assert len(documented) == len(set(documented)), "a value is documented twice"
    unknown = sorted(set(documented) - set(declared))
    assert not unknown, f"README.md documents values the chart does not have: {unknown}"
    # Each value is documented by its own row or by the row of the object holding it (resources),
    # and never both (one row per value).
    for path in declared:
        covering = [row for row in documented if path == row or path.startswith(row + ".")]
        holds_documented = any(row.startswith(path + ".") for row in documented)
        assert len(covering) == 1 or (not covering and holds_documented), f"{path} is not documented exactly once"


def chart_values(cluster: Cluster, tmp_path: Path) -> dict:
    """The chart's default values as the templates see them (a copy of the chart with one more
    template printing them as JSON)."""
    chart = tmp_path / "fedid"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("crds"))
    (chart / "templates" / "values-json.yaml").write_text("{{ toJson .Values }}\n")
    rendered = helm(cluster, "template", "fedid", str(chart), "--show-only", "templates/values-json.yaml").stdout
    return json.loads(rendered.split("\n", 2)[2])  # after "---" and "# Source: ..."


def test_documented_defaults_are_the_values(cluster: Cluster, tmp_path: Path) -> None:
    """Where the schema states a default, it is the value in values.yaml and the README row's."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = chart_values(cluster, tmp_path)
    rows = dict(re.findall(r"^\| `([A-Za-z][\w.]*)` \| ([^|]*) \|", (CHART / "README.md").read_text(), flags=re.MULTILINE))
    checked = []

    def visit(node: dict, value: object, path: str) -> None:
        if "default" in node:
            assert value == node["default"], f"{path}: values.yaml has {value!r}, the schema says {node['default']!r}"
            shown = json.dumps(value) if not isinstance(value, str) else value
            assert rows[path].strip() == f"`{shown}`", f"{path}: README.md shows {rows[path]!r}, the default is {shown}"
            checked.append(path)
        for key, child in node.get("properties", {}).items():
            if isinstance(value, dict) and key in value:
                visit(child, value[key], f"{path}.{key}" if path else key)

    visit(schema, values, "")
    assert {path for path in checked if path.startswith("pods.")} == {
        "pods.enabled",
        "pods.port",
        "pods.tokenRequest.audience",
        "pods.tokenRequest.qps",
        "pods.tokenRequest.burst",
        "pods.webhook.timeoutSeconds",
        "pods.certManager.enabled",
        "pods.certManager.issuerRef",
    }
