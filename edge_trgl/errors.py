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
