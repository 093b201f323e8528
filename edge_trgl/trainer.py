"""The trainer process of a budgeted run: `python -m edge_trgl.trainer JOB.json RESULT.json`.

Started by the torch-free driver (driver.py) as its only child: it initialises and publishes a
run the driver staged, or resumes one, trains it in this process (train.train_in_process) and
writes {"summary": ...} or {"error": message} to RESULT.json. Errors are the driver's to print.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    job_path, result_path = argv
    from .atomic import atomic_write_json
    from .config import TrainConfig
    from .errors import UserError, error_record
    from .train import train_in_process
    job = json.loads(Path(job_path).read_text())
    from .jobdirs import die_with_parent
    die_with_parent(job.get("parent_pid"))  # an orphaned trainer must not go on writing the run
    try:
        cfg = TrainConfig.from_json(job["config"])
        if job["mode"] == "new":
            summary = train_in_process(cfg, staged=job, rss_limit_bytes=job.get("rss_limit_bytes"))
        else:
            summary = train_in_process(cfg, resume=job["run_dir"],
                                       rss_limit_bytes=job.get("rss_limit_bytes"))
    except UserError as exc:  # Stopped (130), Diverged (3) and the rest (2)
        record = error_record(exc)
        atomic_write_json(result_path, record)
        return record["exit_code"]
    except KeyboardInterrupt:  # a second Ctrl-C: stop now; every file written is atomic
        return 130
    atomic_write_json(result_path, {"summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
