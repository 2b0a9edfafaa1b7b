"""What the user did wrong, said in one line: the error types every input check raises.

A check belongs where an input is read (a config value, a path, a file's bytes); it raises a
:class:`UserError` whose message names the field or path and what is wrong with it, e.g.
``data: /x: no index.json (not an image shard directory; make one with orl-fast ingest)``. The
command line prints that message alone and exits with status 2; the traceback is shown only
with ``--debug`` or ``ORL_FAST_DEBUG=1`` (:func:`debug_requested`). Other failures (a bug, the
machine) are one line too, with status 1.
"""

from __future__ import annotations

import os
import re

DEBUG_ENV = "ORL_FAST_DEBUG"


class UserError(Exception):
    """An input (config value, path, file) is wrong; the message is one line naming it."""


class InputError(UserError, ValueError):
    """A path or the content of a file is not what the step needs (missing, unreadable, other
    data); the message starts with the field or the path."""


class NotFound(InputError, FileNotFoundError):
    """A path the step reads does not exist (or holds nothing it can use)."""


class OutputLocked(UserError):
    """Another run is writing into the same output directory; the message names who."""


# Advice some libraries append that must never reach the user as a way out (torch's
# "weights_only=False" would execute code from the checkpoint).
_NEVER_SHOWN = re.compile(r"weights_only|arbitrary code|trust the source", re.IGNORECASE)


def one_line(error: BaseException, limit: int = 600) -> str:
    """``error``'s message as one line: lines joined, blank and unsafe advice lines dropped."""
    text = str(error)
    if isinstance(error, OSError) and error.strerror:
        name = error.filename if error.filename is not None else ""
        text = f"{name}: {error.strerror}" if name else error.strerror
    lines = [line.strip() for line in text.splitlines()]
    text = " ".join(line for line in lines if line and not _NEVER_SHOWN.search(line))
    text = text or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def debug_requested() -> bool:
    """``ORL_FAST_DEBUG`` is set to something other than empty, 0, false or no."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
