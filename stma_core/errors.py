"""Errors that mean "the user's input is wrong": the CLI prints them as one line and exits non-zero."""


class StmaInputError(Exception):
    """Bad input from the user. The message names the file and says how to fix it, in one line."""


class StmaOutputError(Exception):
    """An output cannot be written (existing files without --overwrite, unwritable folder, ...)."""
