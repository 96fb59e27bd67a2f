"""Errors raised by the registry; front doors map them to exit codes / gRPC status codes."""


class ArtifactError(Exception):
    """Base class of every registry error."""


class ArtifactNotFound(ArtifactError):
    """The reference names no stored artifact (gRPC: NOT_FOUND)."""


class ArtifactCorrupted(ArtifactError):
    """A stored file is missing, has the wrong size or the wrong sha256, or the manifest is invalid."""


class ArtifactIncompatible(ArtifactError):
    """Two artifacts that must belong together do not (gRPC: FAILED_PRECONDITION)."""
