"""cli/main.py's own behaviour, apart from any subcommand."""

from __future__ import annotations

import sys

from edge_trgl.cli.main import main


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, monkeypatch, capsys):
    """`edge-trgl bench run SUITE --dry-run | head` printed a BrokenPipeError traceback."""
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["bench", "run", "throughput", "--dry-run", "--results", str(tmp_path)]) == 141
    assert capsys.readouterr().err == ""
    assert list(tmp_path.iterdir()) == []
