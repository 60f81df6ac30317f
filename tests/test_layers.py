"""The layers hold: import-linter's contracts in pyproject.toml (serving: entry points > HTTP > scoring >
registry > runtimes > infrastructure > core; training imports only the core of serving), checked on the
tree as it installs (rnnserve/service, rnnserve/training): the repository's folders are mapped there by
setup.py, which a tool that walks directories cannot see."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_import_contracts_are_kept(tmp_path):
    tree = tmp_path / "rnnserve"
    tree.mkdir()
    shutil.copy(ROOT / "rnnserve" / "__init__.py", tree)
    for folder in ("service", "training"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    linter = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([linter], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.stdout.count(" KEPT") == 2
