"""User-facing errors.

Anything a user can cause (a bad path, a malformed file, an unknown option) raises
:class:`UserError` with a message that names the file or option and what was expected. The CLI
prints the message and exits with status 2, without a traceback.
"""


class UserError(Exception):
    """An error caused by the user's input, reported without a traceback."""


def unknown_name(kind: str, name: str, valid) -> UserError:
    """Error for an unknown registry name, listing the valid ones."""
    valid = sorted(valid)
    return UserError(f"unknown {kind} {name!r}; expected one of: {', '.join(valid)}")
