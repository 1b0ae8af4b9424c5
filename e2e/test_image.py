"""The container image's contents, proven without a Docker engine.

The Dockerfile is linted with hadolint, and its build command (between the
build-command markers) is run here, exactly as written, so the binary the image
would hold is built and run: statically linked, and working.
"""

from __future__ import annotations

import os
import re
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
BINARY = REPO_ROOT / "target" / "x86_64-unknown-linux-gnu" / "release" / "fedid"
PT_INTERP = 3


def build_command() -> str:
    """The RUN command between `# build-command-begin` and `# build-command-end`."""
    lines = DOCKERFILE.read_text().splitlines()
    begin = lines.index("# build-command-begin")
    end = lines.index("# build-command-end")
    [run] = [line for line in lines[begin + 1 : end] if line.strip()]
    assert run.startswith("RUN "), run
    return run[len("RUN ") :]


def program_header_types(path: Path) -> list[int]:
    """The p_type of every ELF64 little-endian program header."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LE binary"
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]


@pytest.fixture(scope="module")
def image_binary() -> Path:
    command = build_command()
    result = subprocess.run(
        ["bash", "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=3000
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stderr[-4000:]}"
    assert BINARY.is_file()
    return BINARY


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_command_targets_what_the_image_copies() -> None:
    command = shlex.split(build_command().split("cargo", 1)[1])
    target = command[command.index("--target") + 1]
    copied = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("COPY --from=build")]
    assert copied == [f"COPY --from=build /src/target/{target}/release/fedid /fedid"]


def test_build_stage_copies_every_workspace_member() -> None:
    # The build stage sees only what it copies: a workspace member left out (the core crate,
    # say) breaks `docker build` although the command runs fine in this checkout.
    manifest = (REPO_ROOT / "Cargo.toml").read_text()
    members = re.findall(r'"([^"]+)"', re.search(r"members\s*=\s*\[([^\]]*)\]", manifest).group(1))
    assert members, "the workspace lists its members"
    copied = {source for line in DOCKERFILE.read_text().splitlines()
              if line.startswith("COPY ") and not line.startswith("COPY --from")
              for source in line.split()[1:-1]}
    assert {"Cargo.toml", "Cargo.lock"} <= copied
    assert set(members) <= copied, f"not copied into the build stage: {sorted(set(members) - copied)}"


def test_image_binary_is_static_and_runs(image_binary: Path) -> None:
    assert PT_INTERP not in program_header_types(image_binary), "the binary needs a dynamic loader"
    version = subprocess.run([str(image_binary), "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.strip() == "fedid 0.1.0", version
    crds = subprocess.run([str(image_binary), "crds"], capture_output=True, text=True, timeout=30)
    assert crds.returncode == 0, crds.stderr
    expected = "".join(path.read_text() for path in sorted((REPO_ROOT / "crds").glob("*.yaml")))
    assert crds.stdout == expected
    # Running in a cluster with no kubeconfig and no service account fails clearly, not with a panic.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent"}
    run = subprocess.run([str(image_binary), "run"], capture_output=True, text=True, env=env, timeout=30)
    assert run.returncode != 0
    assert "panicked" not in run.stderr
    assert "Kubernetes client" in run.stderr, run.stderr
