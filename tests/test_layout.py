"""The package's layout: files small enough to read (issue 12: no file over ~600 lines, checked
at 700)."""

from __future__ import annotations

from pathlib import Path

import edge_trgl

MAX_LINES = 700
PACKAGE = Path(edge_trgl.__file__).resolve().parent


def test_no_file_in_the_package_exceeds_700_lines():
    sizes = {path.relative_to(PACKAGE.parent).as_posix(): len(path.read_text().splitlines())
             for path in sorted(PACKAGE.rglob("*.py"))}
    assert sizes, f"no Python files found under {PACKAGE}"
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, (f"files over {MAX_LINES} lines (split them by job): "
                          + ", ".join(f"{name} ({n})" for name, n in sorted(too_long.items())))
