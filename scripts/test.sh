#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#   1. build the workspace (the `amisim` binary the end-to-end tests start);
#   2. every Rust test: unit, integration and the end-to-end tests in tests/ (cargo-nextest if
#      installed, else cargo test), then doctests;
#   3. the Python client tests (tests/clients/python/run.sh: venv, stubs, pytest).
# Beside the build, scripts/ensure-chromium.sh installs Debian's chromium if it can, for the
# test that screenshots an experiment report.
# Every stage runs even if an earlier one failed; the exit status is non-zero if any failed.
# Needs network only for crates.io, PyPI and Debian's packages, and only on the first run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

failed=()
stage() {
  local name="$1"
  shift
  echo "==> $name"
  if ! "$@"; then
    echo "==> FAILED: $name"
    failed+=("$name")
  fi
}

chromium_log=$(mktemp)
scripts/ensure-chromium.sh >"$chromium_log" 2>&1 &
chromium_job=$!

echo "==> cargo build --workspace"
cargo build --workspace
wait "$chromium_job" || true
cat "$chromium_log"
rm -f "$chromium_log"

if cargo nextest --version >/dev/null 2>&1; then
  # scripts/nextest.toml: a hung test is killed after 3 minutes.
  stage "cargo nextest run --workspace" \
    cargo nextest run --workspace --config-file scripts/nextest.toml
  # nextest does not run doctests.
  stage "cargo test --workspace --doc" cargo test --workspace --doc
else
  stage "cargo test --workspace" cargo test --workspace --no-fail-fast
fi

stage "tests/clients/python/run.sh" \
  env AMISIM_BIN="${AMISIM_BIN:-$PWD/target/debug/amisim}" tests/clients/python/run.sh

if [ "${#failed[@]}" -gt 0 ]; then
  printf '==> %d stage(s) failed:\n' "${#failed[@]}"
  printf '    %s\n' "${failed[@]}"
  exit 1
fi
echo "==> all tests passed"
