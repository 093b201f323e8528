"""Fixtures shared by every test folder. Plain helpers (tiny-run arguments, the fake CIFAR-10
writer, the CLI runners, the one-paragraph-error checks) are in tests/helpers.py, imported as
`from helpers import ...`: with --import-mode=importlib a test module cannot import conftest.py
by name, and pyproject.toml puts tests/ on sys.path for helpers.py instead.

The `slow` marker (pyproject.toml) marks tests of more than a few seconds; `python -m pytest -q
-m "not slow"` is the fast subset, `python -m pytest -q` still runs everything.
"""

from __future__ import annotations

import pytest

from edge_trgl.errors import UserError


@pytest.fixture(scope="session")
def ort_available():
    """Skips the test, saying why, where the ONNX Runtime training extra ([ort]) is missing."""
    from edge_trgl.backends.ort_common import require_ort
    try:
        require_ort(need_onnx=True)
    except UserError as exc:
        pytest.skip(f"the ONNX Runtime training extra is not installed ({exc})")
