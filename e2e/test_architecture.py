"""The architecture promised in docs/architecture.md, checked from the source tree.

- The pure core crate (`fedid-core`) depends on no Kubernetes client, HTTP stack, TLS or
  async runtime: `cargo tree` is asked, not trusted.
- No import circle: neither between two files (modules) of a crate, nor between its top-level
  domains (`issuer`, `identity`, `credentials`, ... in the core; `issuer`, `identity`,
  `runtime`, ... in the shell).
- No decision is made in the shell: the shell's reconcilers call the core's pipeline phases.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT

# Crates that would mean the core talks to the network, to the apiserver, or runs tasks.
FORBIDDEN_IN_CORE = {
    "kube", "kube-client", "kube-runtime", "hyper", "hyper-util", "h2", "reqwest", "tokio",
    "tokio-util", "tower", "axum", "rustls", "tokio-rustls", "hyper-rustls",
}

CRATES = {"core": REPO_ROOT / "core" / "src", "operator": REPO_ROOT / "operator" / "src"}


def test_the_core_crate_has_no_client_network_tls_or_runtime_dependency() -> None:
    result = subprocess.run(
        ["cargo", "tree", "-p", "fedid-core", "-e", "normal", "--prefix", "none", "--locked"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    crates = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    # The tree is real: the core does see the Kubernetes types and signs tokens.
    assert {"fedid-core", "kube-core", "k8s-openapi", "jsonwebtoken"} <= crates, crates
    assert not crates & FORBIDDEN_IN_CORE, sorted(crates & FORBIDDEN_IN_CORE)


def modules(src: Path) -> dict[tuple[str, ...], Path]:
    """Module path -> file, for every file of a crate (lib.rs and main.rs are the root)."""
    found = {}
    for file in src.rglob("*.rs"):
        parts = file.relative_to(src).with_suffix("").parts
        if parts[-1] == "mod":
            parts = parts[:-1]
        if parts in (("lib",), ("main",)):
            parts = ()
        found[parts] = file
    return found


def expand_use(tree: str) -> list[str]:
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+", "", tree)
    if "{" not in tree:
        return [tree]
    prefix, rest = tree.split("{", 1)
    inner = rest[: rest.rindex("}")]
    items, depth, current = [], 0, ""
    for char in inner:
        if char == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        current += char
    items.append(current)
    return [path for item in items if item for path in expand_use(prefix + item)]


def production_source(file: Path) -> str:
    text = file.read_text()
    # Test modules may reach anywhere; the architecture is about production code.
    text = re.split(r"#\[cfg\(test\)\]\s*(?:pub )?mod \w+", text)[0]
    return re.sub(r"//[^\n]*", "", text)


def import_graph(src: Path, root: str) -> dict[tuple[str, ...], set[tuple[str, ...]]]:
    """Edges from each module to the modules it names through `crate::` (or `root::`)."""
    known = modules(src)
    graph: dict[tuple[str, ...], set[tuple[str, ...]]] = {module: set() for module in known}
    for module, file in known.items():
        text = production_source(file)
        paths = [p for tree in re.findall(r"\buse\s+((?:crate|%s)::[^;]+);" % root, text) for p in expand_use(tree)]
        paths += re.findall(r"\b(?:crate|%s)::[A-Za-z_][\w:]*" % root, text)
        for path in paths:
            parts = tuple(part for part in path.split("::")[1:] if part)
            # The longest prefix naming a module of this crate is the dependency.
            for length in range(len(parts), 0, -1):
                target = parts[:length]
                if target in known:
                    if target != module and module[: len(target)] != target:
                        graph[module].add(target)
                    break
    return graph


def find_cycle(graph: dict) -> list | None:
    state: dict = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return stack[stack.index(successor):] + [successor]
            if successor not in state:
                cycle = visit(successor, stack)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


@pytest.mark.parametrize("crate", sorted(CRATES))
def test_no_import_circle_between_modules_or_domains(crate: str) -> None:
    root = {"core": "fedid_core", "operator": "fedid"}[crate]
    graph = import_graph(CRATES[crate], root)
    assert sum(len(edges) for edges in graph.values()) > 10, "the parser found the imports"
    assert find_cycle(graph) is None, " -> ".join("::".join(m) for m in find_cycle(graph))
    domains: dict = {}
    for module, targets in graph.items():
        for target in targets:
            if module and target and module[0] != target[0]:
                domains.setdefault(module[0], set()).add(target[0])
    cycle = find_cycle(domains)
    assert cycle is None, "domains import each other: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle() -> None:
    # A checker that cannot fail proves nothing.
    assert find_cycle({("a",): {("b",)}, ("b",): {("a",)}}) == [("a",), ("b",), ("a",)]
    assert find_cycle({("a",): {("b",)}, ("b",): set()}) is None
    assert expand_use("crate::{a::b, c::{d, e::F}}") == ["crate::a::b", "crate::c::d", "crate::c::e::F"]


def test_the_shell_reconcilers_delegate_every_decision_to_the_core() -> None:
    # The phases the docs name are the core's functions, called by the shell's pipelines.
    identity = production_source(CRATES["operator"] / "identity" / "reconcile.rs")
    for phase in ("validate(", "plan(", "mint(", "build_request(", "parse_reply(", "render_secret(",
                  "decide_report(", "exchange_backoff_pending(", "transition_event("):
        assert phase in identity, phase
    issuer = production_source(CRATES["operator"] / "issuer" / "reconcile.rs")
    for phase in ("validate_issuer_spec(", "recover_key_ring(", "rotate(", "render_key_ring_secret(",
                  "render_static_files(", "next_status(", "transition_event(", "requeue("):
        assert phase in issuer, phase
    for text in (identity, issuer):
        # Decisions (renewal times, conditions, backoff) are not computed in the shell.
        for decision in ("set_condition(", "renew_at(", "should_reissue(", "plan_rotation("):
            assert decision not in text, decision
