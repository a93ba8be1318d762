#!/usr/bin/env bash
# Installs the Debian tools some tests use (systemd-analyze, chromium and chromium-driver for the
# HTML report and the review station, the PostgreSQL server, faketime for a station clock ahead of
# the file server's, promtool of the prometheus package for the alert rules) when this machine
# can: as root with apt reachable. Tests that need them skip otherwise.
set -u
need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v faketime >/dev/null 2>&1 || need+=(faketime)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: ${need[*]} not installed (needs root and apt); the tests that use them will be skipped"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
timeout 300 apt-get update -qq >/dev/null 2>&1 || { echo "note: apt-get update failed; skipping ${need[*]}"; exit 0; }
timeout 600 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || echo "note: could not install ${need[*]}; the tests that use them will be skipped"
exit 0
