"""The messages of the user-facing exceptions."""

from __future__ import annotations

import shlex
from pathlib import Path

from crosslevel.errors import TrainingInterrupted


def test_continue_command_is_pasteable_with_spaces_and_quotes() -> None:
    run_dir = Path("/data/my runs/it's cld")
    stop = TrainingInterrupted("SIGTERM", 143, run_dir / "checkpoints" / "last.ckpt", run_dir)
    command = str(stop).splitlines()[-1].removeprefix("continue with: ")
    assert shlex.split(command) == ["crosslevel", "train", f"resume={run_dir}"]
