"""The layers hold: import-linter's contracts in pyproject.toml (serving: entry points > HTTP > scoring >
registry > runtimes > infrastructure > core; training imports only the core of serving), checked on the tree as
Python imports it (rnnserve/service and rnnserve/training are links to the repository's folders)."""

from __future__ import annotations

import re
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


def _code_map() -> dict[tuple[str, str], str]:
    """docs/architecture.md's code map: (folder, subfolder or "") -> the text that describes its modules. A
    folder starts a line (`service/`), a subfolder is the first word of a line indented by 11 (`runtime/`),
    and more indented lines go on describing the one before."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## The code", 1)[1].split("```", 2)[1]
    sections: dict[tuple[str, str], str] = {}
    top = sub = ""
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        words = line.split()
        if not words:
            continue
        if indent == 0:
            top, words = words[0], words[1:]
            sub = ""
            if words and words[0].endswith("/"):
                sub, words = words[0], words[1:]
        elif indent == 11:
            sub = ""
            if words[0].endswith("/"):
                sub, words = words[0], words[1:]
        sections[top, sub] = sections.get((top, sub), "") + " " + " ".join(words)
    return sections


def test_the_architecture_page_names_every_module():
    sections = _code_map()
    missing = []
    for folder in ("service", "training"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".c", ".proto") or path.name == "__init__.py" or "__pycache__" in path.parts:
                continue
            parts = path.relative_to(ROOT).parts
            where = (f"{parts[0]}/", f"{parts[1]}/" if len(parts) > 2 else "")
            if not re.search(rf"(?<![\w.]){re.escape(path.name)}", sections.get(where, "")):
                missing.append("/".join(parts))
    assert not missing, f"docs/architecture.md does not name {missing}"
