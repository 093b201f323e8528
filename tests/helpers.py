"""Plain helpers shared by the test files: `from helpers import TINY, write_fake_cifar, ...`.

Importable as the top-level module `helpers` because pyproject.toml puts tests/ on sys.path
(`pythonpath = ["tests"]` in [tool.pytest.ini_options]). They live here and not in conftest.py:
with --import-mode=importlib a test module cannot reliably `import conftest` (pytest imports each
conftest.py under its own name, and tests/backends/ has a conftest.py of its own). Fixtures shared
by every folder are in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_trgl.killpoints import ENV

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"   # the real CIFAR-10 / MNIST, where present

# --- tiny runs ------------------------------------------------------------------------------------

# A complete run in about a second: 200 synthetic images, ResNet-8 at width 0.25 in 2 modules, one
# epoch, one thread. Tuples, so that no test can change them for the tests after it.
TINY = ("--synthetic-train", "200", "--synthetic-test", "100", "--model", "resnet8", "--width",
        "0.25", "--modules", "2", "--batch-size", "32", "--epochs", "1", "--threads", "1",
        "--quiet")
# The data and process settings of the slightly larger tiny runs (300 synthetic images); each
# file adds its own model and schedule options.
SYNTHETIC_300 = ("--synthetic-train", "300", "--synthetic-test", "100", "--threads", "1",
                 "--quiet")

# --- the CIFAR-10 file format ---------------------------------------------------------------------

# the [defaults] of a benchmark matrix whose rows are tiny synthetic runs (a few seconds each)
TINY_MATRIX_DEFAULTS = """[defaults]
data = "synthetic"
synthetic-train = 64
synthetic-test = 32
model = "resnet8"
width = 0.25
batch-size = 32
"""

CIFAR_CLASSES = (b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
                 b"ship", b"truck")
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def write_cifar_files(folder: Path, batches: dict[str, dict], meta: dict | None = None) -> Path:
    """Write `batches` (file name -> batch dict) and batches.meta into `folder` as the original
    CIFAR-10 python files are written: pickles of protocol 2. `meta` defaults to the ten CIFAR-10
    label names."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    if meta is None:
        meta = {b"label_names": list(CIFAR_CLASSES)}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_fake_cifar(folder: Path, n: int = 20, *, test: int | None = None,
                     learnable: bool = False) -> Path:
    """A tiny dataset in the CIFAR-10 file format (the real loader and its restricted unpickler
    run on it; loading takes milliseconds): five training batches of `n` images and a test batch
    of `test` (default `n`), from one generator seeded 0, so the same call writes the same bytes.

    Uniform noise with labels 0..9 in turn by default; with `learnable`, random labels and a
    class-dependent brightness, so that there is something to learn."""
    rng = np.random.default_rng(0)

    def batch(size: int) -> dict:
        if not learnable:
            return {b"labels": [i % 10 for i in range(size)],
                    b"data": rng.integers(0, 256, (size, 3072), dtype=np.uint8)}
        labels = rng.integers(0, 10, size)
        data = rng.integers(0, 128, (size, 3072)) + 12 * labels[:, None]
        return {b"labels": labels.tolist(), b"data": data.astype(np.uint8)}
    sizes = [n] * 5 + [n if test is None else test]
    batches = {name: batch(size) for name, size in zip(CIFAR_BATCHES, sizes)}
    return write_cifar_files(folder, batches)


# --- running the CLI ------------------------------------------------------------------------------

def cli(capsys, *argv) -> tuple[int, str, str]:
    """`edge-trgl ARGV` in this process: (exit status, stdout, stderr), read through capsys."""
    from edge_trgl.cli.main import main
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def run_cli(*argv) -> tuple[int, str]:
    """`edge-trgl ARGV` in this process with its output swallowed: (exit status, stderr). For
    fixtures and hypothesis tests, which have no capsys of their own."""
    from edge_trgl.cli.main import main
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code
    return rc, err.getvalue()


def python_child(code: str, *args: str) -> subprocess.CompletedProcess:
    """`python -c CODE ARGS...` in a fresh process with this checkout first on its path (what a
    fresh process imports, e.g. whether torch got in), its output captured as text."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                          capture_output=True, text=True)


def cli_child(*argv, kill: str | None = None, extra_env: dict[str, str] | None = None,
              timeout_s: float = 300) -> subprocess.CompletedProcess:
    """`edge-trgl ARGV` in a child process (text output captured, `timeout_s` limit); `kill` sets the
    EDGE_TRGL_TEST_KILL_AT kill point (edge_trgl/killpoints.py), which is otherwise unset;
    `extra_env` adds variables to the child's environment."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env.update(extra_env or {})
    if kill:
        env[ENV] = kill
    return subprocess.run([sys.executable, "-m", "edge_trgl.cli.main", *map(str, argv)],
                          env=env, capture_output=True, text=True, timeout=timeout_s)


# --- the one-paragraph error ----------------------------------------------------------------------

def assert_clean_error(rc: int, err: str, *phrases: str) -> str:
    """Exit status 2 and one error message of one paragraph (argparse's usage lines allowed) that
    contains every phrase; returns the message with its whitespace collapsed."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("usage:", " "))]
    assert len([line for line in lines if "error:" in line]) == 1, err  # one message
    assert "\n\n" not in err.strip(), err                               # one paragraph
    text = " ".join(err.split())
    for phrase in phrases:
        assert phrase in text, (phrase, text)
    return text


def assert_one_paragraph_error(rc: int, err: str, *phrases: str) -> None:
    """Stricter than assert_clean_error: the whole of stderr is the program's own one-paragraph
    error (`edge-trgl: error: ...`, no usage lines) and contains every phrase."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert err.startswith("edge-trgl: error: "), err
    assert err.count("error:") == 1 and "\n\n" not in err.strip(), err
    text = " ".join(err.split())
    for phrase in phrases:
        assert phrase in text, (phrase, text)


def run_arrays(run: Path) -> dict[str, np.ndarray]:
    """Every stored weight of a run (blocks and heads), keyed 'blocks/<file>/<tensor>'."""
    from safetensors.numpy import load_file
    out = {}
    for folder in ("blocks", "heads"):
        for path in sorted((run / folder).glob("*.safetensors")):
            for name, arr in load_file(str(path)).items():
                out[f"{folder}/{path.stem}/{name}"] = arr
    assert out, f"no stored weights under {run}"
    return out


def run_weights(run: Path) -> dict[str, bytes]:
    """Every stored weight of a run (blocks and heads), as bytes: equal dicts = bit-identical."""
    return {k: np.ascontiguousarray(v).tobytes() for k, v in run_arrays(run).items()}


def fill_disk_after(monkeypatch, module, free_bytes: int, only: str | None = None) -> None:
    """Every file `module` opens (`only`: whose path contains that text) refuses writes with
    ENOSPC once `free_bytes` have been written to such files, as a full disk does to the first
    writer that needs space; other files are written normally."""
    import builtins
    import errno
    left = {"bytes": free_bytes}
    real_open = builtins.open

    class FillingDisk:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            left["bytes"] -= len(data)
            if left["bytes"] < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    def filling_open(*args, **kwargs):
        fh = real_open(*args, **kwargs)
        return FillingDisk(fh) if only is None or only in str(args[0]) else fh
    monkeypatch.setattr(module, "open", filling_open, raising=False)


# --- benchmark report sections ----------------------------------------------------------------------

class CollectingReport:
    """Stands in for bench/report.py's report in a section's test: the lines it adds, no plots."""
    plt = None

    def __init__(self):
        self.lines: list[str] = []
        self.headline_goals: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)


def assert_imports_no_dynamo(code: str) -> None:
    """Run `code` in a fresh interpreter and check that it imported neither torch._dynamo nor
    sympy (together ~70 MB held for the process's life)."""
    code += "\nimport sys\nprint('torch._dynamo' in sys.modules, 'sympy' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "False"], out.stdout
