"""The output Secret beyond fedid's own keys, on the real control plane: `spec.output.template`
(MiniJinja templates over the credentials, a `kubernetes.io/dockerconfigjson` Secret the apiserver
validates) and `spec.output.rollout` (real Deployments restarted by kube-controller-manager when
the credentials change). fedid runs as the chart's ServiceAccount with `rollout.enabled=true`; the
exchanged credentials come from a scripted HTTPS token service on loopback (`peers/recorder.py`).
"""

from __future__ import annotations

import base64
import datetime
import json
import time
import uuid
from typing import Iterator

import pytest

from conftest import Cluster, wait_for
from fedid_harness import (
    Operator,
    chart_operator,
    condition,
    events_for,
    get_json,
    secret_data,
    token_service,
    verify_token,
)
from peers.recorder import Recorder

RUN = uuid.uuid4().hex[:6]
TEAM = f"output-{RUN}"
ISSUER = f"output-{RUN}"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorder, str]]:
    with token_service(tmp_path_factory.mktemp("token-service")) as running:
        yield running


@pytest.fixture(scope="module")
def operator(cluster: Cluster, service: tuple[Recorder, str]) -> Iterator[Operator]:
    recorder, _ = service
    with chart_operator(cluster, "fedid-output", [TEAM], extra_args=["--rollout"],
                        values=("rollout.enabled=true",)) as running:
        issuer = {
            "apiVersion": "fedid.dev/v1alpha1",
            "kind": "IdentityIssuer",
            "metadata": {"name": ISSUER},
            "spec": {
                "issuerURL": running.issuer_url(ISSUER),
                "signing": {"prepublishPeriod": "0s"},
                "allowedNamespaces": {"names": [TEAM]},
                "exchange": {"allowedEndpoints": [f"{recorder.url}/"]},
            },
        }
        wait_for("the issuer to be accepted", lambda: cluster.apply(json.dumps(issuer)).returncode == 0)
        cluster.kubectl("wait", "--for=condition=Ready", f"identityissuer/{ISSUER}", "--timeout=60s")
        yield running
        assert "at-" not in running.logs(), "exchanged credentials appeared in the operator's logs"
    cluster.kubectl("delete", "identityissuer", ISSUER, "--wait=false", check=False)


def identity(cluster: Cluster, name: str, output: dict, exchange: dict | None = None) -> None:
    spec: dict = {"issuerRef": ISSUER, "audiences": ["registry.example.com"], "output": output}
    if exchange:
        spec["exchange"] = exchange
    cluster.apply(json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": TEAM}, "spec": spec,
    }))


def oauth2(service: tuple[Recorder, str]) -> dict:
    recorder, ca = service
    return {"caBundle": ca, "timeout": "5s", "oauth2": {"tokenURL": f"{recorder.url}/token"}}


def ready(cluster: Cluster, name: str) -> dict:
    cluster.kubectl("wait", "--for=condition=Ready", f"fid/{name}", "-n", TEAM, "--timeout=60s")
    return get_json(cluster, "fid", name, "-n", TEAM)


def renew(cluster: Cluster, name: str) -> float:
    """Asks for a new token (as `kubectl fedid renew` does) and returns the requested time."""
    at = int(time.time()) + 1
    stamp = datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.kubectl("annotate", "--overwrite", "fid", name, "-n", TEAM, f"fedid.dev/renew-requested-at={stamp}")
    return at


def issued_since(cluster: Cluster, name: str, at: float) -> dict:
    def check() -> dict | None:
        found = get_json(cluster, "fid", name, "-n", TEAM)
        issued = found.get("status", {}).get("issuedAt")
        if issued and datetime.datetime.fromisoformat(issued.replace("Z", "+00:00")).timestamp() >= at:
            return found
        return None
    return wait_for(f"a token for {name} issued after the renew request", check, timeout=60)


def test_templates_render_a_docker_config_and_an_env_file(cluster: Cluster, operator: Operator,
                                                          service: tuple[Recorder, str]) -> None:
    name = "registry"
    docker = ('{"auths":{"registry.example.com":{"auth":"{{ (\'oauth2accesstoken:\' ~ access_token) | b64encode }}"}}}')
    identity(cluster, name, exchange=oauth2(service), output={
        "secretType": "kubernetes.io/dockerconfigjson",
        "template": [
            {"key": ".dockerconfigjson", "template": docker},
            {"key": "app.env", "template": "SUBJECT={{ claims.sub }}\nTOKEN={{ token }}\nEXPIRES={{ expires_at }}\n"},
        ],
    })
    ready(cluster, name)
    secret = secret_data(cluster, TEAM, f"{name}-token")
    # The apiserver accepted the type, which it only does with valid JSON under .dockerconfigjson.
    assert get_json(cluster, "secret", f"{name}-token", "-n", TEAM)["type"] == "kubernetes.io/dockerconfigjson"
    data = secret["decoded"]
    access_token = data["access-token"]
    assert access_token.startswith("at-")
    auth = json.loads(data[".dockerconfigjson"])["auths"]["registry.example.com"]["auth"]
    assert base64.b64decode(auth).decode() == f"oauth2accesstoken:{access_token}"
    token = data["token"]
    claims = verify_token(operator, token, operator.issuer_url(ISSUER), "registry.example.com")
    assert data["app.env"] == f"SUBJECT={claims['sub']}\nTOKEN={token}\nEXPIRES={data['expires-at']}\n"

    # A refresh renders the templates again with the new credentials.
    issued_since(cluster, name, renew(cluster, name))
    def refreshed() -> dict | None:
        now = secret_data(cluster, TEAM, f"{name}-token")["decoded"]
        return now if now["access-token"] != access_token else None
    now = wait_for("new credentials in the Secret", refreshed, timeout=60)
    auth = json.loads(now[".dockerconfigjson"])["auths"]["registry.example.com"]["auth"]
    assert base64.b64decode(auth).decode() == f"oauth2accesstoken:{now['access-token']}"
    assert f"TOKEN={now['token']}\n" in now["app.env"]


def test_a_template_error_is_reported_and_the_fix_applies(cluster: Cluster, operator: Operator) -> None:
    name = "broken"
    identity(cluster, name, output={"template": [{"key": "config.json", "template": "{\"a\": \"{{ access_token }}\"}"}]})
    found = wait_for("InvalidTemplate", lambda: (c if (c := condition(get_json(cluster, "fid", name, "-n", TEAM)))
                                                 and c["reason"] == "InvalidTemplate" else None))
    assert found["status"] == "False"
    # Which key, and why: without an exchange there is no access token.
    assert 'output.template["config.json"]' in found["message"] and "undefined" in found["message"], found
    assert cluster.kubectl("get", "secret", f"{name}-token", "-n", TEAM, check=False).returncode != 0
    wait_for("the InvalidTemplate Event", lambda: [e for e in events_for(cluster, TEAM, name)
                                                   if e.get("reason") == "InvalidTemplate"] or None)

    # A key fedid writes itself is refused too.
    identity(cluster, name, output={"template": [{"key": "token", "template": "x"}]})
    wait_for("the reserved key", lambda: "fedid writes that key itself" in
             ((condition(get_json(cluster, "fid", name, "-n", TEAM)) or {}).get("message", "")) or None)

    # Fixed: the Secret appears with the rendered key.
    identity(cluster, name, output={"template": [{"key": "config.json", "template": "{\"sub\": \"{{ claims.sub }}\"}"}]})
    ready(cluster, name)
    data = secret_data(cluster, TEAM, f"{name}-token")["decoded"]
    assert json.loads(data["config.json"]) == {"sub": f"system:fedid:{TEAM}:{name}"}


def test_the_schema_refuses_bad_keys_and_a_docker_type_needs_its_key(cluster: Cluster, operator: Operator) -> None:
    bad = {
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": "bad-key", "namespace": TEAM},
        "spec": {"issuerRef": ISSUER, "audiences": ["a"], "output": {"template": [{"key": "no/slash", "template": "x"}]}},
    }
    refused = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode != 0 and "spec.output.template[0].key" in refused.stderr, refused.stderr
    name = "docker-without-key"
    identity(cluster, name, output={"secretType": "kubernetes.io/dockerconfigjson"})
    found = wait_for("InvalidTemplate", lambda: (c if (c := condition(get_json(cluster, "fid", name, "-n", TEAM)))
                                                 and c["reason"] == "InvalidTemplate" else None))
    assert "needs an output.template entry for the key .dockerconfigjson" in found["message"]


def test_a_changed_template_rewrites_the_secret_and_the_type_is_immutable(cluster: Cluster,
                                                                          operator: Operator) -> None:
    name = "retemplated"
    identity(cluster, name, output={"template": [{"key": "who", "template": "{{ claims.sub }}"}]})
    ready(cluster, name)
    first = secret_data(cluster, TEAM, f"{name}-token")["decoded"]
    assert first["who"] == f"system:fedid:{TEAM}:{name}"
    identity(cluster, name, output={"template": [{"key": "audience", "template": "{{ claims.aud }}"}]})

    def rerendered() -> dict | None:
        data = secret_data(cluster, TEAM, f"{name}-token")["decoded"]
        return data if "audience" in data else None
    second = wait_for("the Secret rendered with the new template", rerendered)
    assert second["audience"] == "registry.example.com"
    assert "who" not in second, "the old template's key stayed"
    assert second["token"] != first["token"], "a new template re-issues the token"
    ready(cluster, name)

    # A Secret's type cannot change in place, so neither can the identity's.
    docker = '{"auths":{"r.example.com":{"auth":"{{ (\'fedid:\' ~ token) | b64encode }}"}}}'
    changed = cluster.kubectl("apply", "-f", "-", check=False, input=json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {"issuerRef": ISSUER, "audiences": ["registry.example.com"],
                 "output": {"secretType": "kubernetes.io/dockerconfigjson",
                            "template": [{"key": ".dockerconfigjson", "template": docker}]}},
    }))
    assert changed.returncode != 0 and "output.secretType cannot be changed" in changed.stderr, changed.stderr
    assert get_json(cluster, "secret", f"{name}-token", "-n", TEAM)["type"] == "Opaque"


# --- rollout -----------------------------------------------------------------------------------


def deployment(cluster: Cluster, name: str) -> None:
    cluster.apply(json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]},
            },
        },
    }))


def replica_sets(cluster: Cluster, name: str) -> list[dict]:
    """The Deployment's ReplicaSets: one per pod template it has run, so one per restart."""
    listed = json.loads(cluster.kubectl("get", "replicasets", "-n", TEAM, "-l", f"app={name}", "-o", "json").stdout)
    return listed["items"]


def rolled_out(cluster: Cluster, name: str) -> dict | None:
    return next((c for c in get_json(cluster, "fid", name, "-n", TEAM).get("status", {}).get("conditions", [])
                 if c["type"] == "RolledOut"), None)


def wait_rolled_out(cluster: Cluster, name: str, reason: str, timeout: float = 60) -> dict:
    return wait_for(f"RolledOut {reason}", lambda: (c if (c := rolled_out(cluster, name)) and c["reason"] == reason
                                                    else None), timeout=timeout)


def restarts(operator: Operator, outcome: str = "restarted") -> float:
    return operator.metric("fedid_rollout_restarts_total", {"namespace": TEAM, "outcome": outcome})


def test_rights_with_rollout_are_a_patch_on_workloads_only(cluster: Cluster, operator: Operator) -> None:
    subject = "system:serviceaccount:fedid-system:fedid"
    for verb, resource, allowed in [
        ("patch", "deployments.apps", True), ("patch", "statefulsets.apps", True), ("patch", "daemonsets.apps", True),
        ("get", "deployments.apps", False), ("list", "deployments.apps", False), ("update", "deployments.apps", False),
        ("delete", "deployments.apps", False), ("patch", "replicasets.apps", False), ("patch", "pods", False),
    ]:
        answer = cluster.kubectl("auth", "can-i", verb, resource, "-n", TEAM, f"--as={subject}", check=False).stdout.strip()
        assert answer == ("yes" if allowed else "no"), f"can-i {verb} {resource}: {answer}"


def test_one_refresh_restarts_each_workload_exactly_once(cluster: Cluster, operator: Operator) -> None:
    name, web = "rolled", "web"
    deployment(cluster, web)
    wait_for("the first ReplicaSet", lambda: len(replica_sets(cluster, web)) == 1 or None)
    identity(cluster, name, output={"rollout": {"targets": [{"kind": "Deployment", "name": web}], "minInterval": "15s"}})
    ready(cluster, name)
    # First sight: the workload already runs with these credentials (it waited for the Secret).
    recorded = wait_rolled_out(cluster, name, "UpToDate")
    assert recorded["status"] == "True"
    before = restarts(operator)
    assert len(replica_sets(cluster, web)) == 1

    issued_since(cluster, name, renew(cluster, name))
    restarted = wait_rolled_out(cluster, name, "RolledOut")
    assert f"Deployment/{web}" in restarted["message"]
    status = get_json(cluster, "fid", name, "-n", TEAM)["status"]
    digest = status["rollout"]["credentialsDigest"]
    template = get_json(cluster, "deployment", web, "-n", TEAM)["spec"]["template"]["metadata"]
    assert template["annotations"]["fedid.dev/credentials-digest"] == digest
    wait_for("the restart's ReplicaSet", lambda: len(replica_sets(cluster, web)) == 2 or None)
    wait_for("the RolledOut Event", lambda: [e for e in events_for(cluster, TEAM, name)
                                            if e.get("reason") == "RolledOut"] or None)

    # More passes over the same credentials restart nothing: poke the Secret (a change to it
    # makes its identity's controller look again) and wait for the passes to run.
    passes = operator.metric("fedid_reconciles_total", {"controller": "identity"})
    for poke in range(3):
        cluster.kubectl("annotate", "--overwrite", "secret", f"{name}-token", "-n", TEAM, f"example.com/poke={poke}")
        wait_for("a reconcile pass", lambda: operator.metric("fedid_reconciles_total", {"controller": "identity"})
                 > passes + poke or None)
    assert len(replica_sets(cluster, web)) == 2
    assert restarts(operator) == before + 1
    assert get_json(cluster, "fid", name, "-n", TEAM)["status"]["rollout"]["credentialsDigest"] == digest

    # A second change within minInterval waits for it, then gives one more restart.
    first_restart = status["rollout"]["lastRestartTime"]
    issued_since(cluster, name, renew(cluster, name))
    pending = wait_rolled_out(cluster, name, "RolloutPending", timeout=15)
    assert pending["status"] == "False" and "minInterval" in pending["message"]
    assert len(replica_sets(cluster, web)) == 2
    wait_rolled_out(cluster, name, "RolledOut", timeout=45)
    second_restart = get_json(cluster, "fid", name, "-n", TEAM)["status"]["rollout"]["lastRestartTime"]
    parse = lambda text: datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()  # noqa: E731
    assert parse(second_restart) - parse(first_restart) >= 15
    wait_for("the second restart's ReplicaSet", lambda: len(replica_sets(cluster, web)) == 3 or None)
    assert restarts(operator) == before + 2


def test_a_missing_workload_is_reported_and_retried(cluster: Cluster, operator: Operator) -> None:
    name, present = "half-rolled", "api"
    deployment(cluster, present)
    identity(cluster, name, output={"rollout": {"minInterval": "10s", "targets": [
        {"kind": "Deployment", "name": present}, {"kind": "StatefulSet", "name": "absent"}]}})
    ready(cluster, name)
    wait_rolled_out(cluster, name, "UpToDate")
    failed_before = restarts(operator, "failed")
    issued_since(cluster, name, renew(cluster, name))
    failed = wait_rolled_out(cluster, name, "RolloutFailed")
    assert "StatefulSet/absent: not found" in failed["message"], failed
    assert f"Deployment/{present}" not in failed["message"]
    wait_for("the RolloutFailed Event", lambda: [e for e in events_for(cluster, TEAM, name)
                                                if e.get("reason") == "RolloutFailed"] or None)
    # The workload that exists was restarted; the failed one is tried again after minInterval.
    wait_for("the present workload restarted", lambda: len(replica_sets(cluster, present)) == 2 or None)
    wait_for("a retry", lambda: restarts(operator, "failed") >= failed_before + 2 or None, timeout=45)
    # Once the workload exists, the retry succeeds.
    cluster.apply(json.dumps({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "absent", "namespace": TEAM},
        "spec": {"selector": {"matchLabels": {"app": "absent"}}, "serviceName": "absent",
                 "template": {"metadata": {"labels": {"app": "absent"}},
                              "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]}}},
    }))
    wait_rolled_out(cluster, name, "RolledOut", timeout=45)
    assert len(replica_sets(cluster, present)) == 2, "the retry restarted the Deployment a second time"


def test_without_the_flag_rollout_is_reported_disabled(cluster: Cluster, operator: Operator) -> None:
    name = "not-rolled"
    identity(cluster, name, output={"rollout": {"targets": [{"kind": "DaemonSet", "name": "agent"}]}})
    ready(cluster, name)
    wait_rolled_out(cluster, name, "UpToDate")
    args = list(operator.extra_args)
    operator.stop()
    operator.extra_args = [arg for arg in args if arg != "--rollout"]
    try:
        operator.start()
        issued_since(cluster, name, renew(cluster, name))
        disabled = wait_rolled_out(cluster, name, "RolloutDisabled")
        assert disabled["status"] == "False" and "--rollout" in disabled["message"]
        assert [e for e in events_for(cluster, TEAM, name) if e.get("reason") == "RolloutDisabled"]
    finally:
        operator.stop()
        operator.extra_args = args
        operator.start()


def test_rollout_cannot_be_used_with_pods(cluster: Cluster, operator: Operator) -> None:
    refused = cluster.kubectl("apply", "-f", "-", check=False, input=json.dumps({
        "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
        "metadata": {"name": "pods-rollout", "namespace": TEAM},
        "spec": {"issuerRef": ISSUER, "audiences": ["a"], "pods": {},
                 "output": {"rollout": {"targets": [{"kind": "Deployment", "name": "web"}]}}},
    }))
    assert refused.returncode != 0 and "output.rollout cannot be used with pods" in refused.stderr, refused.stderr
