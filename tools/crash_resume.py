"""Power-cut drill: kill -9 a real training run at random moments, resume it each time, and check
that it ends exactly where an uninterrupted run with the same seed ends.

    python tools/crash_resume.py --data cifar10 --data-dir ../shared/data/cifar-10-batches-py \
        --kills 6 -- --model resnet8 --train-fraction 0.02 --epochs 2 --modules 2

Everything after `--` is passed to `edge-trgl train` (both runs get the same options and
--threads 1, so the computation is deterministic). The kill moments are drawn uniformly over
the first half of the reference run's duration (seeded, --seed), so they land in start-up,
set-up, epochs, checkpoint and weight writes, and cache writing alike; a resumed process that
finishes before its moment ends the drill early. Reports each kill's moment and the state it left, then
compares: every file the manifest lists verifies, weights of every block and head are
bit-identical, the per-module accuracies and per-epoch metrics are equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOLATILE = {"time", "seconds", "samples_per_s", "rss_bytes"}


def train_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "edge_trgl.cli.main", "train", "--quiet", *args]


def listed_files_ok(run: Path) -> tuple[int, list[str]]:
    files = json.loads((run / "manifest.json").read_text())["files"]
    bad = [rel for rel, sha in files.items()
           if not (run / rel).is_file() or hashlib.sha256((run / rel).read_bytes()).hexdigest() != sha]
    return len(files), bad


def weights(run: Path) -> dict[str, bytes]:
    from safetensors.numpy import load_file
    out = {}
    for folder in ("blocks", "heads"):
        for path in sorted((run / folder).glob("*.safetensors")):
            for name, arr in load_file(str(path)).items():
                out[f"{folder}/{path.stem}/{name}"] = arr.tobytes()
    return out


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def accuracies(run: Path) -> list:
    return [(m["module"], m["val_acc"], m["test_acc"])
            for m in json.loads((run / "summary.json").read_text())["modules"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5, help="how many SIGKILLs (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--workdir", help="where to put the two runs (default: a temp folder)")
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="-- then options for edge-trgl train")
    opts = parser.parse_args()
    extra = opts.train_args[1:] if opts.train_args[:1] == ["--"] else opts.train_args
    extra = [*extra, "--threads", "1"]
    work = Path(opts.workdir or tempfile.mkdtemp(prefix="edge-trgl-crash-"))
    reference, run = work / "reference", work / "killed"

    start = time.time()
    subprocess.run(train_cmd([*extra, "--out", str(reference)]), check=True)
    duration = time.time() - start
    print(f"reference run: {duration:.1f} s", flush=True)

    rng = random.Random(opts.seed)
    kills, attempts = 0, 0
    args = [*extra, "--out", str(run)]
    while True:
        attempts += 1
        proc = subprocess.Popen(train_cmd(args), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if kills < opts.kills:
            # a resumed process has less left to do, so the moments are drawn from the first
            # half of the reference run's duration (start-up included)
            delay = rng.uniform(0.5, 0.5 * duration)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        else:
            proc.wait()
        stderr = proc.stderr.read()
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            state = "no run directory yet (killed during set-up)"
            if (run / "manifest.json").exists():
                progress = json.loads((run / "manifest.json").read_text())["progress"]
                count, bad = listed_files_ok(run)
                state = f"progress {progress}; {count} listed files, {len(bad)} damaged {bad}"
            print(f"kill {kills} after {delay:.1f} s: {state}", flush=True)
            if (run / "manifest.json").exists():
                args = ["--resume", str(run)]
            continue
        if proc.returncode != 0:
            print(stderr, file=sys.stderr)
            print(f"FAIL: training exited with {proc.returncode}")
            return 1
        break

    count, bad = listed_files_ok(run)
    checks = {
        f"all {count} listed files verify": not bad,
        "weights bit-identical": weights(run) == weights(reference),
        "accuracies equal": accuracies(run) == accuracies(reference),
        "per-epoch metrics equal (each epoch once)": metrics(run) == metrics(reference),
        "no temp files left": not list(run.rglob(".*.tmp*")),
    }
    print(f"{kills} kills, {attempts} processes; accuracies {accuracies(run)}")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
