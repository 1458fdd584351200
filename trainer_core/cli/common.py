"""What every command shares: the real stdout for results, one-line refusals of bad numbers, run references."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trainer_core.common.errors import UserError

# The real stdout, kept for our results: while a command runs, sys.stdout points at stderr so that library
# chatter (DeepSpeed logs its accelerator choice on stdout) cannot corrupt `--json` output or the run-dir line.
STDOUT = [sys.stdout]


def emit(*args, **kwargs) -> None:
    print(*args, file=STDOUT[0], flush=True, **kwargs)


def write_out(text: str) -> None:
    """Streamed output (a chat reply, a followed log) to the real stdout."""
    STDOUT[0].write(text)
    STDOUT[0].flush()


def print_json(obj) -> None:
    emit(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


def bounded(value: int | float | None, flag: str, lo, hi, *, why: str = "") -> None:
    """Numbers typed on the command line get the same one-line refusal as config fields (argparse would print
    its usage block)."""
    if value is not None and not lo <= value <= hi:  # also false for NaN
        if why:
            raise UserError("cli.out_of_range_why", "{flag} must be between {lo:,} and {hi:,} ({why}) (got {value})",
                            flag=flag, lo=lo, hi=hi, why=why, value=value)
        raise UserError("cli.out_of_range", "{flag} must be between {lo:,} and {hi:,} (got {value})", flag=flag, lo=lo,
                        hi=hi, value=value)


def run_dir(ref: str) -> Path:
    """A run given by name or directory."""
    from trainer_core.runs.registry import resolve_run_dir

    return resolve_run_dir(ref)


def add_config_args(s) -> None:
    """CONFIG and --set, as `plan` and `train` take them."""
    s.add_argument("config")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.learning_rate=2e-5")
