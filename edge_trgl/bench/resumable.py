"""Resumable benchmark rows: a row longer than one sitting (a 360-epoch module-wise run on 10 % of
CIFAR-10 is ~3 h at one thread) trains in WORK_DIR/<row id>/run instead of a temporary folder. A
run stopped by the row's time limit or by a signal stays there with a record of each stopped
attempt (segments.json); the next `bench run --resumable` of the row continues it with
`edge-trgl train --resume` (which rebuilds any feature cache it lost) instead of starting over.

The finished row's result says it was run in segments: `segments` lists every attempt (command,
start and end, load averages, wall and CPU seconds, peaks measured from outside, how it ended), and
its wall and CPU seconds are the sums over the attempts (the work an interruption threw away
included), its peaks the maxima. Accuracies come from the finished run, which resume makes
identical to an uninterrupted one (tests/test_resume.py)."""

from __future__ import annotations

import signal
from pathlib import Path

from ..atomic import atomic_write_json
from ..errors import UserError
from .matrix import BenchRow
from .results import read_json, throughput

SEGMENTS_FILE = "segments.json"
# how long a trainer asked to stop (SIGTERM) gets to finish its epoch and save before it is killed;
# killed, it still resumes from its last saved epoch (writes are atomic), it only loses more work
STOP_GRACE_S = 600.0


def resumable_row_dir(work_dir: str | None, row: BenchRow) -> Path:
    """WORK_DIR/<row id>, created if new. Refuses (UserError) when it holds a stopped run of
    different train options: resuming would continue the old recipe under the new row's name."""
    if not work_dir:
        raise UserError("--resumable needs --work-dir: the stopped run of a row is kept in "
                        "WORK_DIR/<row id> for the next invocation to continue, so it must be a "
                        "directory that outlives the command (not $TMPDIR).")
    root = Path(work_dir) / row.row_id
    stored = read_json(root / SEGMENTS_FILE)
    if stored is not None and _recipe(stored.get("train_args") or []) != _recipe(row.train_args):
        raise UserError(f"{root} holds a stopped run of row {row.row_id} with other train options "
                        f"({' '.join(map(str, stored.get('train_args') or []))}) than the matrix's "
                        f"row now has; delete that directory to start the row afresh.")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _recipe(args: list) -> list:
    """Train arguments less where the data lie: the matrix's relative data-dir resolves to another
    absolute path on another machine or checkout, and the trainer itself checks, by fingerprint,
    that the data a run resumes on are the data it started with."""
    args = [str(a) for a in args]
    return [("<data-dir>" if i and args[i - 1] == "--data-dir" else a) for i, a in enumerate(args)]


def resume_command(python_m: list[str], out: Path, row: BenchRow) -> list[str]:
    """`train --resume` of the kept run, told where the row's data lie here (its own copy of the
    data is not committed with a partial row, so a resume on another machine reads them anew)."""
    where = ["--data-dir", str(row.options["data_dir"])] if row.options.get("data_dir") else []
    return [*python_m, "train", "--resume", str(out), *where, "--quiet"]


def previous_segments(root: Path) -> list[dict]:
    return list((read_json(root / SEGMENTS_FILE) or {}).get("segments", []))


def add_segment(root: Path, row: BenchRow, segment: dict) -> list[dict]:
    segments = [*previous_segments(root), segment]
    atomic_write_json(root / SEGMENTS_FILE, {"row_id": row.row_id, "train_args": row.train_args,
                                             "segments": segments})
    return segments


def how_it_ended(returncode: int, timed_out: bool) -> str:
    if returncode == 0:
        return "finished"
    if returncode == 130 and not timed_out:
        return "asked to stop (SIGINT or SIGTERM): stopped at the end of an epoch"
    if timed_out:
        return ("time limit: stopped at the end of an epoch" if returncode == 130
                else f"time limit: killed after {STOP_GRACE_S:g} s of grace")
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


def worth_resuming(returncode: int, timed_out: bool) -> bool:
    """A run worth continuing: stopped by its time limit, or killed by a signal (an OOM kill, a
    `kill -9`); an error exit (bad data, a refused plan) would fail again the same way."""
    return returncode != 0 and (timed_out or returncode < 0 or returncode == 130)


def combine_segments(measurements: dict, metrics: list[dict], segments: list[dict]) -> None:
    """Turn the last attempt's measurements into the row's: sums of time, maxima of peaks."""
    m = measurements
    for key in ("vmhwm_polled_bytes", "tree_rss_peak_bytes"):
        m[key] = max([m.get(key) or 0] + [s.get(key) or 0 for s in segments])
    m["peak_rss_bytes"] = max(m["peak_rss_bytes"], m["vmhwm_polled_bytes"])
    m["peak_rss_method"] += "; the maximum over the row's attempts"
    m["wall_s"] = sum(s["wall_s"] for s in segments)
    cpus = [s.get("cpu_s") for s in segments]
    m["cpu_s"] = sum(cpus) if None not in cpus else None
    # the trainer's own run_s covers only the last attempt; the row's is every attempt's wall time
    m.update(throughput(metrics, m["wall_s"],
                        breaks=[s["finished_unix"] for s in segments[:-1] if "finished_unix" in s]))
    m["run_s_method"] = "sum of the attempts' whole-command wall-clock seconds (a resumed row)"
    if m.get("network_epochs") and m["cpu_s"]:
        m["cpu_s_per_network_epoch"] = m["cpu_s"] / m["network_epochs"]
    m["segments"] = len(segments)
