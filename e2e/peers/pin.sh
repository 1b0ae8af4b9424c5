#!/usr/bin/env bash
# Regenerates go.mod/go.sum of one peer module, e2e/peers/<peer>/, for an upstream module version.
# Usage: e2e/peers/pin.sh <peer> <module>@<version> [<module>=<module'>@<version>...]
#   e2e/peers/pin.sh dex github.com/dexidp/dex@v0.0.0-20260303133905-11d2eeb52b42
#   e2e/peers/pin.sh minio github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c
# <peer>/tools.go (build tag `tools`) must already import the package to build.
# Projects that tag without a /vN suffix resolve only as pseudo-versions (v0.0.0-<commit time>-<commit>).
# Upstream replace lines do not apply to a consumer module, so they are carried over:
#   M => ./dir           becomes M => M@<the version upstream requires>,
#   M => other@version   is copied as it is,
#   a replacement given on the command line (M=M'@V) wins over both; it is needed for a
#   local directory that is not M's own module (e.g. a stub).
# godebug lines are not inherited either and are copied too.
set -euo pipefail
peer=${1:?usage: pin.sh <peer> <module>@<version> [<module>=<module>@<version>...]}
target=${2:?usage: pin.sh <peer> <module>@<version> [<module>=<module>@<version>...]}
shift 2
cd "$(dirname "$0")/$peer"
[ -f tools.go ] || { echo "$PWD/tools.go is missing" >&2; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

upstream_mod=$(go mod download -json "$target" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("GoMod") or sys.exit(d.get("Error")))')
rm -f go.mod go.sum
go mod init "fedid.dev/e2e/peers/$peer" >/dev/null 2>&1
go mod edit -go="$(sed -n 's/^go //p' "$upstream_mod")"

declare -A override=()
for arg in "$@"; do override[${arg%%=*}]=${arg#*=}; done
# One "old => new" per line, from both the single-line and the block form of replace.
replaces=$(awk '/^replace \(/{b=1; next} b && /^\)/{b=0; next} b{print; next} /^replace /{sub(/^replace /,""); print}' "$upstream_mod")
while read -r old old_version arrow new new_version; do
  [ -n "$old" ] || continue
  if [ "$old_version" = "=>" ]; then  # no version on the left: shift the fields
    new_version=$new new=$arrow old_version=""
  fi
  if [ -n "${override[$old]:-}" ]; then
    go mod edit -replace="$old=${override[$old]}"
    unset "override[$old]"
  elif [[ $new == ./* || $new == ../* ]]; then
    required=$(awk -v m="$old" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$upstream_mod")
    [ -n "$required" ] || { echo "upstream replaces $old with $new but requires no version of it; pass $old=<module>@<version>" >&2; exit 1; }
    go mod edit -replace="$old=$old@$required"
  else
    go mod edit -replace="$old${old_version:+@$old_version}=$new${new_version:+@$new_version}"
  fi
done <<< "$replaces"
for old in "${!override[@]}"; do go mod edit -replace="$old=${override[$old]}"; done
grep '^godebug' "$upstream_mod" >> go.mod || true

go get "$target"
go mod tidy
echo "pinned $peer to $target" >&2
