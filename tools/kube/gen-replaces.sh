#!/usr/bin/env bash
# Pins tools/kubecluster/go.mod to one Kubernetes release.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/client-go, ...)
# at v0.0.0 and points them at ./staging in its own go.mod; a module that imports it
# must replace each of them with the published v0.<minor>.<patch>. This script reads
# the release's own go.mod, writes those replace lines, pins go.etcd.io/etcd/server/v3
# to the version Kubernetes itself pins, and tidies. A version bump is one command:
#
#   tools/kubecluster/gen-replaces.sh v1.37.3
#
# Without an argument it regenerates the lines for the version go.mod already has.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

version=${1:-}
if [[ -z $version ]]; then
	version=$(go mod edit -json | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Require") or []:
    if r["Path"] == "k8s.io/kubernetes":
        print(r["Version"])')
fi
if [[ ! $version =~ ^v1\.([0-9]+)\.([0-9]+)$ ]]; then
	echo "gen-replaces: need a Kubernetes release like v1.37.2 (got '${version}')" >&2
	exit 2
fi
staging=v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}

gomod=$(go mod download -json "k8s.io/kubernetes@${version}" |
	python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')

# The staging modules: every k8s.io/* that the release requires at v0.0.0.
mapfile -t modules < <(awk '
	/^require[ \t]*\(/ { block = 1; next }
	block && /^\)/ { block = 0; next }
	/^require[ \t]/ { $1 = "" }
	{ sub(/\/\/.*/, "") }
	($1 ~ /^k8s\.io\// && $2 == "v0.0.0") { print $1 }
' "$gomod" | sort -u)
if ((${#modules[@]} == 0)); then
	echo "gen-replaces: found no k8s.io/* v0.0.0 requires in $gomod" >&2
	exit 1
fi

etcd=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "$gomod")
if [[ -z $etcd ]]; then
	echo "gen-replaces: $gomod does not pin go.etcd.io/etcd/server/v3" >&2
	exit 1
fi

# Drop the replace lines of an earlier version, then write this one's.
args=()
while read -r old; do
	[[ -n $old ]] && args+=("-dropreplace=$old")
done < <(go mod edit -json | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    if r["Old"]["Path"].startswith("k8s.io/"):
        print(r["Old"]["Path"])')
for m in "${modules[@]}"; do
	args+=("-replace=${m}=${m}@${staging}")
done
args+=("-require=k8s.io/kubernetes@${version}" "-require=go.etcd.io/etcd/server/v3@${etcd}")
go mod edit "${args[@]}"
go mod tidy

echo "kubecluster: k8s.io/kubernetes ${version}, ${#modules[@]} staging modules at ${staging}, etcd server ${etcd}" >&2
