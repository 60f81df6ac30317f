"""A directory whose storage fails on demand, for real: a small tmpfs (as root) that is filled to ENOSPC or
remounted read-only (EROFS); elsewhere, where mounting is not allowed, permissions taken away (EACCES)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SIZE = "64k"


@dataclass
class FailingDirectory:
    path: Path
    mounted: bool

    def fill(self) -> None:
        """Writes fail from now on (ENOSPC on the tmpfs, EACCES elsewhere)."""
        if not self.mounted:
            self._permissions(0o555)
            return
        with open(self.path / "filler", "wb", buffering=0) as fh:
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * 4096)

    def free(self) -> None:
        if self.mounted:
            (self.path / "filler").unlink(missing_ok=True)
        else:
            self._permissions(0o755)

    def read_only(self, on: bool = True) -> None:
        """Every write fails (EROFS on the tmpfs, EACCES elsewhere); on=False undoes it."""
        if self.mounted:
            subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(self.path)], check=True)
        else:
            self._permissions(0o555 if on else 0o755)

    def _permissions(self, mode: int) -> None:
        for folder in [self.path, *(p for p in self.path.rglob("*") if p.is_dir())]:
            folder.chmod(mode)


@contextlib.contextmanager
def full_directory(path: Path) -> Iterator[FailingDirectory]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(path)], capture_output=True).returncode == 0
    directory = FailingDirectory(path, mounted)
    try:
        yield directory
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)
        else:
            directory._permissions(0o755)
