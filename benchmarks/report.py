#!/usr/bin/env python
"""Rebuild benchmarks/results/REPORT.md (and plots/) from the committed JSON results:
`python benchmarks/report.py [RESULTS_DIR] [--no-plots]`, the same as `edge-trgl bench report`."""

import sys

from edge_trgl.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "report", *sys.argv[1:]]))
