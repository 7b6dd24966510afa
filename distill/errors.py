"""Errors a user can act on. Each carries the process exit code the CLI uses for it.

Exit codes (docs/runs.md, "The run directory"): 0 ok; 1 internal error (a bug); 2 the user's input (recipe, data,
arguments) or a command not built yet; 3 the export parity gate failed; 4 the run directory is
locked.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2
EXIT_PARITY = 3
EXIT_LOCKED = 4


class DistillError(Exception):
    """A failure the user can fix; the message is one paragraph that says what and how."""

    exit_code = EXIT_USER


class RecipeError(DistillError):
    """The recipe (file or --set overrides) is invalid. Holds every problem found, not just the first."""

    def __init__(self, problems: list[str], source: str):
        self.problems = problems
        self.source = source
        lines = [f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the recipe:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class AssetError(DistillError):
    """A builtin/packaged asset is missing, has the wrong version, or failed to install."""


class DataError(DistillError):
    """The data cannot be loaded or is unusable as given."""


class RunDirError(DistillError):
    """The run directory is in a state that needs a decision (exists, corrupt)."""


class LockedError(DistillError):
    exit_code = EXIT_LOCKED


class NotBuiltError(DistillError):
    """A command or stage that a later issue builds; says so plainly instead of pretending."""


class ParityError(DistillError):
    exit_code = EXIT_PARITY


class ExportError(DistillError):
    """The model or folder given to `distill export onnx` cannot be exported as it is."""
