"""The run operations behind the pages' buttons (launch, resume, delete) and what a page reads of one run.

Pages import `app/` only (tests/test_layers.py); these are the `trainer_core` calls they make directly, named in one
place so a page never reaches past `app/`.
"""

from trainer_core.common.errors import UserError, each_error
from trainer_core.config.memory import fmt_bytes
from trainer_core.runs import protocol
from trainer_core.runs.lifecycle import resume
from trainer_core.runs.orchestrate import device_busy, launch
from trainer_core.runs.registry import delete_run
from trainer_core.runs.state import read_state

__all__ = ["UserError", "delete_run", "device_busy", "each_error", "fmt_bytes", "launch", "protocol", "read_state", "resume"]
