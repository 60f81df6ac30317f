"""The layers hold: import-linter's contracts in pyproject.toml (serving: entry points > HTTP > scoring >
registry > runtimes > infrastructure > core; training imports only the core of serving), checked on the tree as
Python imports it (rnnserve/service and rnnserve/training are links to the repository's folders)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_import_contracts_are_kept():
    linter = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([linter], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.stdout.count(" KEPT") == 2


def test_mypy_sees_the_projects_own_types(tmp_path):
    """The type check reads rnnserve's own modules (not Any): a wrong use of a class from another module fails."""
    probe = tmp_path / "probe.py"
    probe.write_text("from rnnserve.service.core.errors import ServiceError\n\nx: int = ServiceError('a')\n")
    mypy = Path(sys.executable).parent / "mypy"
    r = subprocess.run([mypy, "--no-incremental", str(probe)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout
    assert 'expression has type "ServiceError", variable has type "int"' in r.stdout
