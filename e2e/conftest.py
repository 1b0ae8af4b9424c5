"""Shared fixtures for fedid's end-to-end tests.

Every test here talks to a real control plane (etcd, kube-apiserver and
kube-controller-manager built from Go modules by cluster/build), started once
per test session by cluster/up. Set FEDID_E2E_CLUSTER to the DIR of a cluster
you started yourself (e2e/cluster/up DIR) to reuse it between runs.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import pytest

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent
CLUSTER_DIR = E2E_DIR / "cluster"

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25) -> T:
    """Polls `check` until it returns something truthy, like `kubectl wait`.

    Returns that value; fails the test with `what` after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as error:  # the condition may not be checkable yet
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


@dataclass
class Cluster:
    """A running local control plane and the tools built for it."""

    dir: Path
    bin: Path

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    def env(self) -> dict[str, str]:
        """Environment for child processes: this cluster's kubeconfig, its tools first on PATH."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs the cluster's own kubectl; raises with its stderr when `check` and it fails."""
        result = subprocess.run(
            [str(self.bin / "kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def apply(self, manifest: str) -> subprocess.CompletedProcess[str]:
        """`kubectl apply -f -` of a YAML manifest."""
        return self.kubectl("apply", "-f", "-", input=manifest)


def _build_tools() -> Path:
    result = subprocess.run([str(CLUSTER_DIR / "build")], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"cluster/build failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    """One real control plane for the whole session (or the one named by FEDID_E2E_CLUSTER)."""
    tools = _build_tools()
    existing = os.environ.get("FEDID_E2E_CLUSTER")
    if existing:
        yield Cluster(dir=Path(existing).resolve(), bin=tools)
        return
    state = Path(tempfile.mkdtemp(prefix="fedid-e2e-cluster-"))
    started = subprocess.run([str(CLUSTER_DIR / "up"), str(state)], capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        raise RuntimeError(f"cluster/up failed:\n{started.stdout}\n{started.stderr}")
    try:
        yield Cluster(dir=state, bin=tools)
    finally:
        subprocess.run([str(CLUSTER_DIR / "down"), str(state)], timeout=120, check=False)
