#!/usr/bin/env python
"""Run benchmark suites: `python benchmarks/run.py [MATRIX ...] [--quick] [options]`.

The same as `edge-trgl bench run ...`; see `edge-trgl bench run --help`."""

import sys

from edge_trgl.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "run", *sys.argv[1:]]))
