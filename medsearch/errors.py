"""One error hierarchy for the whole product.

Every error names the problem *and* the fix, and never carries patient data:
messages are built from constant text plus non-identifying values (paths the
operator chose, setting names, counts).  The CLI maps ``exit_code`` and the web
layer maps ``http_status``; nothing else translates errors.
"""

from __future__ import annotations


class MedsearchError(Exception):
    """Base class: ``problem`` says what went wrong, ``fix`` what to do about it."""

    exit_code = 1
    http_status = 500
    code = "error"

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.problem} Fix: {self.fix}" if self.fix else self.problem

    def to_dict(self) -> dict:
        return {"error": self.code, "problem": self.problem, "fix": self.fix}


class ConfigError(MedsearchError):
    """A setting is unknown, mistyped or inconsistent."""

    exit_code = 2
    code = "config"


class InstanceError(MedsearchError):
    """The instance directory is missing or incomplete."""

    exit_code = 3
    code = "instance"


class KeyringError(MedsearchError):
    """Key material is missing, unreadable, or the wrong key was supplied."""

    exit_code = 4
    code = "keys"


class StorageError(MedsearchError):
    """The database is unreachable or not at the expected migration."""

    exit_code = 5
    code = "storage"
    http_status = 503


class IntegrityError(MedsearchError):
    """Stored data failed an integrity check (tampering or corruption)."""

    exit_code = 6
    code = "integrity"


class InputError(MedsearchError):
    """Bad input from a user or peer (malformed DICOM, hostile request, ...)."""

    exit_code = 7
    code = "input"
    http_status = 400


class NotFoundError(MedsearchError):
    exit_code = 8
    code = "not_found"
    http_status = 404


class AuthError(MedsearchError):
    """Missing or wrong credentials."""

    exit_code = 9
    code = "unauthorized"
    http_status = 401


class ForbiddenError(MedsearchError):
    """Authenticated, but the role does not allow this."""

    exit_code = 9
    code = "forbidden"
    http_status = 403


class ModelError(MedsearchError):
    """The model cannot be loaded or does not match the index."""

    exit_code = 10
    code = "model"


class NotBuiltError(MedsearchError):
    """A command whose capability has not landed yet.  It must not pretend to work."""

    exit_code = 64
    code = "not_built"
    http_status = 503

    def __init__(self, capability: str):
        super().__init__(
            f"This command waits for the capability '{capability}', which is not built yet.",
            "See docs/cli.md for the commands that work today.",
        )
