"""The one exception type that reaches the user as a readable paragraph."""


class UserError(Exception):
    """Something the user gave us is wrong (an option, a file, a budget).

    The message must say what was wrong and what to do about it; the CLI prints it as one
    paragraph and exits with status 2, never with a traceback.
    """
