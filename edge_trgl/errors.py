"""The one exception type that reaches the user as a readable paragraph."""


class UserError(Exception):
    """Something the user gave us is wrong (an option, a file, a budget).

    The message must say what was wrong and what to do about it; the CLI prints it as one
    paragraph and exits with status 2, never with a traceback.
    """


class Stopped(UserError):
    """The user stopped the program (Ctrl-C, SIGTERM) and it stopped cleanly at a safe point; the
    message says how to continue. The CLI exits with 130, the shell's code for SIGINT."""

    exit_code = 130


class Diverged(UserError):
    """Training produced non-finite weights (NaN or inf). The run keeps its last good checkpoint;
    resuming it would diverge again (a resumed run is bit-identical), so the message says what
    to change. Exit status 3, so scripts can tell it from bad input (2)."""

    exit_code = 3


class PeerLost(UserError):
    """--distributed: another rank died, or did not answer within --dist-timeout. This rank
    stops at once (no hang); every rank keeps its checkpoints, and resuming every rank continues
    from the newest epoch all of them hold. Exit status 4."""

    exit_code = 4

    def __init__(self, detail: str, what: str | None = None):
        if what is None:  # (rebuilt from a child's error record: `detail` is the message)
            super().__init__(detail)
            return
        super().__init__(
            f"Lost the other ranks while {what}: {detail}. Another rank stopped or crashed, or "
            f"the network between them failed (each rank waits at most --dist-timeout seconds). "
            f"This rank stopped; every rank keeps its checkpoints. When all ranks can run "
            f"again, start the same job with --resume DIR on every rank (DIR: the --out the job "
            f"was started with): they continue from the newest epoch all of them saved.")


def error_record(exc: UserError) -> dict:
    """What a child process writes to its result file so that its parent raises the same kind of
    error (and the command exits with the same status)."""
    return {"error": str(exc), "exit_code": getattr(exc, "exit_code", 2)}


def recorded_error(result: dict) -> UserError:
    """The error a child recorded with `error_record`."""
    kinds = {Stopped.exit_code: Stopped, Diverged.exit_code: Diverged,
             PeerLost.exit_code: PeerLost}
    kind = kinds.get(result.get("exit_code"), UserError)
    return kind(result["error"])
