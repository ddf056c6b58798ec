#!/usr/bin/env python3
"""Times a region node's restart: from spawning `amisim region` on an existing data directory
to its "listening on" line (issue 7, target 2; see docs/performance.md).

    scripts/restart-time.py AMISIM_BINARY DATA_DIR [RUNS]
"""
import subprocess
import sys
import time


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    binary, data = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) == 4 else 3
    for run in range(1, runs + 1):
        t0 = time.monotonic()
        p = subprocess.Popen(
            [binary, "region", "--name", "us-east-1", "--data", data, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        served = None
        assert p.stdout is not None
        for line in p.stdout:
            if "listening on" in line:
                served = time.monotonic() - t0
                break
        p.terminate()
        p.wait()
        if served is None:
            print(f"run {run}: the node exited (code {p.returncode}) before serving", file=sys.stderr)
            return 1
        print(f"run {run}: serving after {served:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
