#!/usr/bin/env bash
# Regenerates go.mod/go.sum of this module for a Kubernetes release.
# Usage: e2e/cluster/pin.sh 1.35.4
# k8s.io/kubernetes replaces its staging modules with ./staging paths, so a consumer
# module must pin each of them to the published v0.<minor>.<patch> tag itself.
set -euo pipefail
version=${1:?usage: pin.sh <kubernetes version, e.g. 1.35.4>}
staging=0.${version#1.}
cd "$(dirname "$0")"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
upstream_mod=$(go mod download -json "k8s.io/kubernetes@v$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
rm -f go.mod go.sum
go mod init fedid.dev/e2e/cluster >/dev/null 2>&1
go mod edit -go="$(sed -n 's/^go //p' "$upstream_mod")"
for module in $(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$upstream_mod"); do
  go mod edit -replace="$module=$module@v$staging"
done
# godebug lines of a dependency are not inherited; carry them over.
grep '^godebug' "$upstream_mod" >> go.mod || true
go get "k8s.io/kubernetes@v$version"
go mod tidy
echo "pinned k8s.io/kubernetes v$version (staging v$staging); etcd: $(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
