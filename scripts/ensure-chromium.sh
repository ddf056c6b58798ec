#!/usr/bin/env bash
# Makes sure headless Chromium is there for the report screenshot test (tests/tests/chaos_run.rs
# renders an `amisim chaos run` HTML report with scripts/screenshot-report.sh).
# Installs Debian's `chromium` package when it is missing and we may (root + apt-get).
# Never fails the caller: without Chromium the screenshot check is skipped and says so.
set -uo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo present)"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: not installed and cannot install it here (need root and apt-get); the report screenshot check will be skipped"
  exit 0
fi
echo "chromium: installing Debian's chromium package"
export DEBIAN_FRONTEND=noninteractive
if timeout 600 apt-get update -qq >/tmp/amisim-apt.log 2>&1 &&
  timeout 600 apt-get install -y -qq --no-install-recommends chromium >>/tmp/amisim-apt.log 2>&1; then
  echo "chromium: installed $(/usr/bin/chromium --version 2>/dev/null)"
else
  tail -20 /tmp/amisim-apt.log
  echo "chromium: install failed; the report screenshot check will be skipped"
fi
exit 0
