#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, when missing and when we may.
set -euo pipefail
if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: prometheus/promtool not installed and not root: monitoring tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package starts a system service where an init system exists; tests run their own.
(service prometheus stop || true) >/dev/null 2>&1
