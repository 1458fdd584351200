"""Files a user names (a dataset, a config, a model's JSON), checked before they are opened and read with a bound.

Reading /dev/zero never ends, opening a FIFO blocks until a writer comes, and a /proc or /sys file says it is empty
whatever it holds: a path is stat'ed first (through any symlink) and only a regular file outside the kernel's
virtual folders is opened, and then read no further than a size limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from trainer_core.common.errors import Text, UserError, text

KERNEL_ROOTS = (Path("/proc"), Path("/sys"))
"""The kernel's virtual files: they report 0 bytes whatever they hold, and some never end."""
_KINDS = ((stat.S_ISCHR, text("files.kind_char_device", "character device")),
          (stat.S_ISBLK, text("files.kind_block_device", "block device")),
          (stat.S_ISFIFO, text("files.kind_fifo", "FIFO (named pipe)")),
          (stat.S_ISSOCK, text("files.kind_socket", "socket")))
SMALL_FILE = 16 * 1024 * 1024
"""Limit for JSON and YAML files a user hands us (configs, state.json, a model's config.json): far above any real
one."""


def not_readable(path: Path, info: os.stat_result | None = None) -> Text | None:
    """Why reading `path` (a file or folder already stat'ed as `info`) could hang or mislead: a device, FIFO,
    socket, or a file under /proc or /sys, also behind a symlink; None for a regular file or folder."""
    info = info or path.stat()
    real = Path(os.path.realpath(path))
    via = text("files.via_symlink", " (a symlink to {target})", target=real) if real != path.absolute() else ""
    root = next((r for r in KERNEL_ROOTS if real == r or r in real.parents), None)
    if root:
        return text("files.kernel_file", "is a kernel file under {root}{via}", root=root, via=via)
    kind = next((k for is_kind, k in _KINDS if is_kind(info.st_mode)), None)
    return text("files.special_file", "is a {kind}{via}", kind=kind, via=via) if kind else None


def stat_user_path(path: Path) -> os.stat_result:
    """`path.stat()` with the problems a user can fix (a symlink loop, no permission) as one-line UserErrors;
    FileNotFoundError is left to the caller, who knows what the file is for."""
    try:
        return path.stat()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise UserError("files.unreadable_path", "{path}: cannot be read ({reason})", path=path,
                        reason=e.strerror or str(e)) from None


def read_bytes(path: str | Path, limit: int = SMALL_FILE) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; anything else is a UserError naming the file."""
    path = Path(path)
    info = stat_user_path(path)
    problem = not_readable(path, info)
    if problem:
        raise UserError("files.not_regular", "{path}: {problem}, not a file to read", path=path, problem=problem)
    if stat.S_ISDIR(info.st_mode):
        raise UserError("files.is_folder", "{path}: is a folder, not a file", path=path)
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UserError("files.too_large", "{path}: is larger than {limit:,} bytes; it cannot be this file",
                        path=path, limit=limit)
    return data


def read_text(path: str | Path, limit: int = SMALL_FILE) -> str:
    """`read_bytes` decoded as UTF-8 (UnicodeDecodeError, a ValueError, as `Path.read_text` raises it)."""
    return read_bytes(path, limit).decode("utf-8")
