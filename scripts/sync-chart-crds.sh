#!/usr/bin/env bash
# Copies the generated CRDs into the Helm chart, which must carry identical files
# (tests/unit/chart/test_crds_in_sync.py fails when they differ). Run after `make crd`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/crds"
dst="$root/charts/kiln/crds"
mkdir -p "$dst"
# Drop chart copies whose source is gone, then copy every source CRD.
for f in "$dst"/*.yaml; do
  [ -e "$f" ] || continue
  [ -e "$src/$(basename "$f")" ] || rm -f -- "$f"
done
cp -- "$src"/*.yaml "$dst"/
echo "synced $(ls "$src"/*.yaml | wc -l) CRD file(s) into charts/kiln/crds/"
