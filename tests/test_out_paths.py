"""`--out` paths that cannot become a run directory are refused with one clear paragraph (exit 2)
before any work: before the data is loaded, and with nothing created (issue 15, item 3).

The CLI cases give `--data cifar10 --data-dir MISSING`: had the data been loaded first, the error
would be about the missing data directory, so the message about --out shows the order too.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_trgl.errors import UserError
from edge_trgl.run import Run
from helpers import TINY, assert_one_paragraph_error, run_cli


def train(*argv: str) -> tuple[int, str]:
    return run_cli("train", *argv)


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_out_under_a_file_is_refused_before_the_data_is_loaded(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    rc, err = train(*TINY, "--data", "cifar10", "--data-dir", str(tmp_path / "missing"),
                    "--out", str(notes / "run"))
    assert_one_paragraph_error(rc, err, f"{notes} is a file, not a directory")
    rc, err = train(*TINY, "--data", "cifar10", "--data-dir", str(tmp_path / "missing"),
                    "--out", str(notes / "deeper" / "run"))
    assert_one_paragraph_error(rc, err, f"{notes} is a file, not a directory")
    assert tree(tmp_path) == ["notes.txt"] and notes.read_text() == "x"


def test_existing_directory_file_and_dangling_link_are_refused(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"mine")
    rc, err = train(*TINY, "--data", "cifar10", "--data-dir", str(tmp_path / "missing"),
                    "--out", str(photos))
    assert_one_paragraph_error(rc, err, "exists and is not an edge-trgl run")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    rc, err = train(*TINY, "--data", "cifar10", "--data-dir", str(tmp_path / "missing"),
                    "--out", str(link))
    assert_one_paragraph_error(rc, err, "is a symbolic link to something that does not exist")
    assert tree(tmp_path) == ["link", "photos", "photos/holiday.jpg"]


def test_empty_or_unusable_out_paths_are_refused_by_check_new_root(tmp_path):
    """The library check itself (train() calls it whenever --out is given)."""
    for bad in ("", "   "):
        with pytest.raises(UserError, match="--out is empty"):
            Run.check_new_root(bad)
    with pytest.raises(UserError, match="cannot be used"):
        Run.check_new_root(tmp_path / ("x" * 300) / "run")   # a name longer than NAME_MAX
    Run.check_new_root(tmp_path / "new" / "deeper" / "run")    # fine: created on demand
    empty = tmp_path / "empty"
    empty.mkdir()
    Run.check_new_root(empty)                                   # an empty directory is fine
    assert tree(tmp_path) == ["empty"]


def test_read_only_parent_is_refused_before_any_work(tmp_path):
    """A read-only mount (the root user writes through file modes, so a real read-only file
    system is the test), in a user namespace; the nearest existing parent decides."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare")
    ro = tmp_path / "ro"
    ro.mkdir()
    q = shlex.quote(str(ro))
    mount = f"mount --bind {q} {q} && mount -o remount,bind,ro {q}"
    if subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True).returncode:
        pytest.skip("cannot make a read-only bind mount here (no user namespaces)")
    for out in (ro / "run", ro / "a" / "b" / "run"):
        cmd = (f"{mount} && {shlex.quote(sys.executable)} -m edge_trgl.cli.main train "
               f"{' '.join(TINY)} --data cifar10 --data-dir {q}/missing "
               f"--out {shlex.quote(str(out))}")
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True,
                              timeout=300, env=os.environ)
        assert_one_paragraph_error(proc.returncode, proc.stderr,
                                   f"the directory {ro} is on a read-only file system")
    assert tree(ro) == []
