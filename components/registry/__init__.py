"""Artifacts registry: content-addressed, atomically written, sha256-verified artifact directories."""

from components.registry.errors import (
    ArtifactCorrupted,
    ArtifactError,
    ArtifactIncompatible,
    ArtifactNotFound,
)
from components.registry.manifest import SCHEMA_VERSION, FileEntry, Manifest
from components.registry.store import Artifact, ArtifactWriter, Ref, Registry, parse_ref

__all__ = [
    "SCHEMA_VERSION",
    "Artifact",
    "ArtifactCorrupted",
    "ArtifactError",
    "ArtifactIncompatible",
    "ArtifactNotFound",
    "ArtifactWriter",
    "FileEntry",
    "Manifest",
    "Ref",
    "Registry",
    "parse_ref",
]
