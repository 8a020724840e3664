"""The errors a user can act on: each message says what to change. Imports nothing (no torch), so anyone may catch.

    from workbench.errors import UserError
    try: ...
    except UserError as e: show(str(e))      # as written; any other exception is a bug: show its type too

The CLI prints a UserError as its one line and the UI toasts it as is; anything else gets its type name in front.
Each error also stays the builtin kind it always was (ValueError, LookupError, ...), so older `except`s still hold.
The modules that raise them re-export them (`from workbench.config import ConfigError` keeps working).
"""

from __future__ import annotations


class UserError(Exception):
    """An error whose message is written for the user: what went wrong and what to change."""


class ConfigError(UserError, ValueError):
    """A run spec value or combination is invalid; the message says what to change."""


class ModelError(UserError, RuntimeError):
    """A model cannot be resolved, loaded or adapted; the message says what to use instead."""


class TaskError(UserError, ValueError):
    """A task cannot be loaded; the message names the problem (and the row) and what to change."""


class RewardError(UserError, ValueError):
    """A reward cannot be built or applied; the message names the valid names, params or columns."""


class StoreError(UserError, RuntimeError):
    """A store operation that cannot be done now; the message says what to do instead."""


class RunNotFound(UserError, LookupError):
    """No run with that id (or the id is malformed)."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else "run not found"


class RunnerBusy(UserError, RuntimeError):
    """No worker slot and no queue space (or the run cannot be started now); the message says what to do."""


class CompareError(UserError, ValueError):
    """The comparison cannot run as asked; the message says what to change."""


class UploadError(UserError, ValueError):
    """An uploaded dataset was refused; the message says what to change."""
