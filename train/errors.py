"""One exception type for bad input: the CLI prints its message as one line, no traceback."""


class UserError(Exception):
    """Bad input from the user: the message names the file/field and the fix."""
