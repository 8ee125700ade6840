"""The one exception type that means "the user can fix this": the CLI prints it as one line and exits non-zero."""


class UserError(Exception):
    """Bad input or environment: a file, value or server the user named. The message says what to do."""
