"""The pydantic manifest stored as ``manifest.json`` in every artifact directory."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class FileEntry(BaseModel):
    """One file of an artifact, relative to the artifact directory."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="path relative to the artifact directory (posix separators)")
    sha256: str = Field(description="hex sha256 of the file's bytes")
    size: int = Field(ge=0, description="size in bytes")

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in v.split("/") or v == "manifest.json":
            raise ValueError(f"file path {v!r} must be relative, inside the artifact, not the manifest")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v


class Manifest(BaseModel):
    """What an artifact is, what made it, and what it contains."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(SCHEMA_VERSION, description="manifest schema version")
    kind: str = Field(description="artifact kind, e.g. dataset, item-embeddings, codebook")
    name: str = Field(description="artifact name within its kind, e.g. industrial")
    version: str = Field(description="content hash over kind, name, parents, params and files")
    parents: list[str] = Field(default_factory=list, description="full refs kind/name@version")
    params: dict[str, Any] = Field(default_factory=dict, description="parameters that made it")
    files: list[FileEntry] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict, description="summary figures (not hashed)")
    created: str = Field(description="UTC ISO-8601 creation time (not hashed)")

    @field_validator("kind", "name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid artifact kind/name ([A-Za-z0-9._-], no leading dot)")
        return v

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(f"manifest schema {v} is newer than this genrec ({SCHEMA_VERSION})")
        return v

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}@{self.version}"


def content_version(kind: str, name: str, parents: list[str], params: dict[str, Any], files: list[FileEntry]) -> str:
    """Deterministic version: sha256 of the canonical JSON of what defines the content (16 hex)."""
    payload = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "name": name,
        "parents": sorted(parents),
        "params": params,
        "files": sorted((f.path, f.sha256) for f in files),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
