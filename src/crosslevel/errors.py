"""The one exception type for problems a user can fix (bad path, bad key, bad value), and the
warning category of crosslevel's own warnings (:func:`warn`)."""

import shlex
import warnings


class CrossLevelError(Exception):
    """A user-facing error: the CLI prints its message and exits non-zero, no traceback."""


class CrossLevelWarning(UserWarning):
    """Something a user should know that does not stop the command (the CLI prints it as one
    ``crosslevel: warning:`` line; library users get it as a normal Python warning)."""


def warn(message: str) -> None:
    """Issue ``message`` as a :class:`CrossLevelWarning` (attributed to the line that calls this)."""
    warnings.warn(message, CrossLevelWarning, stacklevel=2)


class MissingSplit(CrossLevelError):
    """The data set has no such split (e.g. no test folder): training goes on without kNN evaluation."""


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a resumable checkpoint (``checkpoint`` None: it came while a
    ddp_fork / ddp_spawn launch was starting its rank processes, nothing trained); the CLI exits with ``exit_code``."""

    def __init__(self, signal_name: str, exit_code: int, checkpoint: object, run_dir: object) -> None:
        self.signal_name, self.exit_code, self.checkpoint, self.run_dir = signal_name, exit_code, checkpoint, run_dir
        if checkpoint is None:
            super().__init__(f"stopped by {signal_name} before training began: nothing to resume")
            return
        super().__init__(
            f"stopped by {signal_name}; resumable checkpoint: {checkpoint}\n"
            f"continue with: crosslevel train resume={shlex.quote(str(run_dir))}"
        )
