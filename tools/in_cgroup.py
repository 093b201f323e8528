"""Run a command inside a fresh memory cgroup of a given size and report what the kernel saw:
`python tools/in_cgroup.py 512MB -- edge-trgl train --mem-budget 512MB`. Prints one JSON line
(exit status, OOM kills, peak) on stderr at the end; exits with the command's status."""

from __future__ import annotations

import json
import sys

from edge_trgl.budget import parse_size
from edge_trgl.memory.cgroup import run_in_new_cgroup


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    result = run_in_new_cgroup(argv[2:], parse_size(argv[0]))
    if result is None:
        print("no memory cgroup can be created here", file=sys.stderr)
        return 2
    status, report = result
    report.pop("stdout"), report.pop("stderr")
    print(json.dumps({"exit_status": status, **report}), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
