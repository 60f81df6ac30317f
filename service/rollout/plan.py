"""A model's rollout: its version labels, the canary's share of unversioned requests and the shadow's share, as
the rollout file says (models/NAME/rollout.json) or the control API last set it; and how a request's version
is chosen from it.

An API change stands until the file changes: each change records the file's digest as it was when made, and
the API's rollout applies only while the file still has that digest. So every worker, one that starts later
too, reaches the same rollout from the same two inputs (desired.json and the file), and an edited file wins
again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from rnnserve.service.core.errors import InvalidInput, NotFound, echo

log = logging.getLogger("rnnserve.rollout")
FILE = "rollout.json"
LABEL_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"  # never all digits: a version number is never a label
LABEL_RE = re.compile(LABEL_PATTERN)
Label = Annotated[str, StringConstraints(pattern=LABEL_PATTERN)]
Version = Annotated[int, Field(ge=1, le=999_999_999)]  # as a version directory's name (core/package.py)
MAX_FILE_BYTES = 64 * 1024
STABLE, CANARY = "stable", "canary"
# The request's headers (HTTP) or metadata (gRPC), names in lowercase, where a sticky key is read: set by the
# transports before a prediction, read by the data plane's choice of version.
routing: ContextVar[Mapping[str, str] | None] = ContextVar("routing", default=None)


class Rollout(BaseModel):
    """labels: label -> version number. canary_share: the share of unversioned predictions sent to the version
    labelled `canary` (0..1), chosen by the hash of the `sticky_header` request header when a request carries
    it (HTTP header, gRPC metadata), at random otherwise. shadow: a version number or label also run on
    shadow_share of predictions after they are answered, its answers compared with the primary's."""

    model_config = ConfigDict(extra="forbid")

    labels: dict[Label, Version] = {}
    canary_share: float = Field(0.0, ge=0, le=1)
    sticky_header: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$",
                                                    to_lower=True)] | None = None
    shadow: Annotated[str, StringConstraints(pattern=r"^([0-9]{1,9}|[a-z][a-z0-9_-]{0,63})$")] | None = None
    shadow_share: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> Rollout:
        if self.canary_share and CANARY not in self.labels:
            raise ValueError("canary_share needs a 'canary' label (the version it sends requests to)")
        if self.shadow is not None and not (self.shadow.isdigit() or self.shadow in self.labels):
            raise ValueError(f"shadow {self.shadow!r} is neither a version number nor one of the labels")
        if self.shadow_share and self.shadow is None:
            raise ValueError("shadow_share needs a shadow (a version number or a label)")
        return self

    def version_of(self, name: str, label: str) -> int:
        if label not in self.labels:
            raise NotFound(f"model {echo(name)} has no label {echo(label)}; its labels: {sorted(self.labels)}")
        return self.labels[label]

    def promoted(self, name: str) -> Rollout:
        """The canary labelled stable, the split cleared (and a shadow of the canary's version with it)."""
        canary = self.version_of(name, CANARY)
        labels = {k: v for k, v in self.labels.items() if k != CANARY} | {STABLE: canary}
        shadowing = self.shadow is not None and self.shadow in (CANARY, str(canary))
        return self.model_copy(update={"labels": labels, "canary_share": 0.0, "shadow": None if shadowing else
                                       self.shadow, "shadow_share": 0.0 if shadowing else self.shadow_share})

    def rolled_back(self) -> Rollout:
        """The split and the shadow cleared; labels stay (the canary stays addressable by its label)."""
        return self.model_copy(update={"canary_share": 0.0, "shadow": None, "shadow_share": 0.0})


def parse(raw: bytes | str | dict, where: str) -> Rollout:
    """A rollout from JSON (or its dict); InvalidInput naming `where` and the fields that are wrong."""
    try:
        return Rollout.model_validate(raw) if isinstance(raw, dict) else Rollout.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'rollout'}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"{where}: {problems}") from None


def read_file(model_dir: Path) -> tuple[Rollout | None, str | None]:
    """The model's rollout file: (its rollout, its sha256), (None, None) without one. InvalidInput for a file
    that is not a rollout."""
    path = model_dir / FILE
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    digest = hashlib.sha256(raw).hexdigest()
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidInput(f"{FILE} of {model_dir.name} is over {MAX_FILE_BYTES} bytes")
    return parse(raw, f"{FILE} of {model_dir.name}"), digest


def share_of(key: str) -> float:
    """A sticky key's place in [0, 1): the same for every worker and every restart (not Python's hash)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


def choose(rollout: Rollout, headers: Mapping[str, str] | None) -> str | None:
    """The label an unversioned prediction goes to: `canary` for its share, else `stable` (None: no label)."""
    if rollout.canary_share:
        key = headers.get(rollout.sticky_header) if headers is not None and rollout.sticky_header else None
        point = share_of(key) if isinstance(key, str) and key else random.random()
        if point < rollout.canary_share:
            return CANARY
    return STABLE if STABLE in rollout.labels else None


class Rollouts:
    """One worker's rollouts by model name: the files' as last read, and the control API's with the digest of
    the file they were made over (module docstring)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[Rollout | None, str | None]] = {}  # name -> (rollout, its file's sha256)
        self.api: dict[str, tuple[Rollout, str | None]] = {}  # name -> (rollout, the file's sha256 then)
        self.problems: dict[str, str] = {}  # name -> why its file was not taken (the last good one stands)

    def get(self, name: str) -> Rollout | None:
        """The rollout in force for a model (None: none; unversioned requests go to the newest version)."""
        rollout, digest = self.files.get(name, (None, None))
        api = self.api.get(name)
        return api[0] if api is not None and api[1] == digest else rollout

    def file_digest(self, name: str) -> str | None:
        return self.files.get(name, (None, None))[1]

    def scan(self, models_dir: Path) -> None:
        """Read every model's rollout file again (a cheap read of small files at each repository poll). A file
        that is not a valid rollout leaves the last good one in force, logged once per change."""
        names = ({p.name for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
                 if models_dir.is_dir() else set())
        for name in sorted(names | set(self.files)):
            try:
                found = read_file(models_dir / name)
            except InvalidInput as exc:
                if self.problems.get(name) != exc.message:
                    log.error("rollout file refused; the last good one stands", extra={"model": name,
                                                                                        "reason": exc.message})
                self.problems[name] = exc.message
                continue
            self.problems.pop(name, None)
            if found != self.files.get(name, (None, None)):
                log.info("rollout file read", extra={"model": name, "rollout": dump(found[0])})
            if found[1] is None:
                self.files.pop(name, None)
            else:
                self.files[name] = found

    def describe(self, name: str) -> dict:
        """The rollout in force as JSON, with where it came from ("file", "api" or "none")."""
        rollout, digest = self.files.get(name, (None, None))
        api = self.api.get(name)
        source = "api" if api is not None and api[1] == digest else "file" if rollout is not None else "none"
        current = self.get(name) or Rollout()
        return current.model_dump() | {"source": source, "file_problem": self.problems.get(name)}


def dump(rollout: Rollout | None) -> str:
    return "none" if rollout is None else json.dumps(rollout.model_dump(exclude_defaults=True), sort_keys=True)
