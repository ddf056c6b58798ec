#!/usr/bin/env bash
# Renders an `amisim chaos run` HTML report in headless Chromium and saves a PNG screenshot.
#
#   scripts/screenshot-report.sh REPORT.html OUT.png
#
# Needs /usr/bin/chromium (Debian: apt-get install chromium), or CHROMIUM=/path/to/binary.
# The report is self-contained (inline CSS and SVG), so nothing is fetched: networking features
# of the browser are switched off and a throw-away profile is used.
set -euo pipefail

if [ "$#" -ne 2 ]; then
    echo "usage: $0 REPORT.html OUT.png" >&2
    exit 2
fi
report=$1
out=$2
chromium=${CHROMIUM:-/usr/bin/chromium}

if [ ! -f "$report" ]; then
    echo "$0: no such report: $report" >&2
    exit 1
fi
if [ ! -x "$chromium" ]; then
    echo "$0: $chromium not found (apt-get install chromium, or set CHROMIUM)" >&2
    exit 1
fi

abs_report=$(cd "$(dirname "$report")" && pwd)/$(basename "$report")
out_dir=$(cd "$(dirname "$out")" && pwd)
abs_out=$out_dir/$(basename "$out")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

rm -f "$abs_out"
# Chromium prints GPU/dbus noise on stderr in containers; keep it unless the shot fails.
if ! timeout 120 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" \
    --screenshot="$abs_out" --window-size=1400,1800 "file://$abs_report" \
    >"$profile/chromium.log" 2>&1; then
    cat "$profile/chromium.log" >&2
    echo "$0: chromium failed" >&2
    exit 1
fi
if [ ! -s "$abs_out" ]; then
    cat "$profile/chromium.log" >&2
    echo "$0: chromium wrote no screenshot" >&2
    exit 1
fi
echo "$abs_out"
