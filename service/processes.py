"""Process facts the workers of one server share."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether a process of that id exists (a worker that died leaves files behind with its id)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    return True
