#!/usr/bin/env bash
# Python client tests: amisim driven from another language, with stubs generated from the
# .proto files alone (the public contract).
#
#   tests/clients/python/run.sh [pytest args...]
#
# 1. creates tests/clients/python/.venv if missing and installs requirements.txt into it
#    (again only when requirements.txt changes);
# 2. generates Python stubs from proto/ into tests/clients/python/gen (git-ignored);
# 3. runs pytest on test_client.py, which starts `amisim dev` itself.
#
# Environment: AMISIM_BIN (default target/debug/amisim, built if missing), PYTHON (default
# python3; 3.9 or newer).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
python="${PYTHON:-python3}"
venv="$here/.venv"

if [ ! -x "$venv/bin/python" ]; then
  echo "python client: creating $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "python client: installing $(grep -v '^#' "$here/requirements.txt" | tr '\n' ' ')"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$want" >"$stamp"
fi

gen="$here/gen"
rm -rf "$gen"
mkdir -p "$gen"
"$venv/bin/python" -m grpc_tools.protoc \
  -I "$root/proto" \
  --python_out="$gen" --grpc_python_out="$gen" --pyi_out="$gen" \
  "$root"/proto/amisim/v1/*.proto

export AMISIM_BIN="${AMISIM_BIN:-$root/target/debug/amisim}"
if [ ! -x "$AMISIM_BIN" ]; then
  echo "python client: building $AMISIM_BIN"
  (cd "$root" && cargo build -p amisim)
fi

cd "$here"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider test_client.py "$@"
