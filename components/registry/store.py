"""The on-disk registry.

Layout (``root`` is ``artifacts/`` by default)::

    root/<kind>/<name>/<version>/manifest.json   + the artifact's files
    root/<kind>/<name>/LATEST                    text file holding the newest version
    root/.tmp/<random>/                          artifacts being written

Writes go to ``root/.tmp`` first; every file is fsynced, the manifest is written last, and the
directory is renamed into place in one ``os.rename`` (atomic on one filesystem), so a crash never
leaves a half-written artifact where a reader can see it. Loads check the manifest against
pydantic and every file's size and sha256. Only json, numpy (``allow_pickle=False``) and
safetensors files are written: no pickle anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from pydantic import ValidationError

from components.registry.errors import ArtifactCorrupted, ArtifactError, ArtifactNotFound
from components.registry.manifest import NAME_RE, FileEntry, Manifest, content_version

LATEST = "LATEST"
DEFAULT_ROOT = "artifacts"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows fsync on a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Metrics / stats JSON (indent 2, trailing newline), written atomically."""
    def plain(o: Any) -> Any:  # numpy scalars / arrays → Python
        return o.tolist() if hasattr(o, "tolist") else str(o)

    atomic_write_text(Path(path), json.dumps(obj, indent=2, default=plain) + "\n")


@dataclass(frozen=True)
class Ref:
    """A parsed reference ``kind/name[@version|@latest]``."""

    kind: str
    name: str
    version: str = "latest"

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}@{self.version}"


def parse_ref(ref: str | Ref) -> Ref:
    if isinstance(ref, Ref):
        return ref
    if not isinstance(ref, str) or not ref.strip():
        raise ArtifactNotFound(f"empty artifact reference {ref!r}")
    body, _, version = ref.strip().partition("@")
    parts = body.split("/")
    if len(parts) != 2 or not all(NAME_RE.match(p) for p in parts):
        raise ArtifactNotFound(f"malformed artifact reference {ref!r}: expected kind/name[@version|@latest]")
    version = version or "latest"
    if version != "latest" and not all(c in "0123456789abcdef" for c in version):
        raise ArtifactNotFound(f"malformed version {version!r} in {ref!r}: a hex hash or 'latest'")
    return Ref(parts[0], parts[1], version)


class Artifact:
    """A verified, read-only artifact directory."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest

    @property
    def ref(self) -> str:
        return self.manifest.ref

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def params(self) -> dict[str, Any]:
        return self.manifest.params

    @property
    def meta(self) -> dict[str, Any]:
        return self.manifest.meta

    def file(self, rel: str) -> Path:
        if rel not in {f.path for f in self.manifest.files}:
            raise ArtifactCorrupted(f"{self.ref} has no file {rel!r}")
        return self.path / rel

    def has_file(self, rel: str) -> bool:
        return rel in {f.path for f in self.manifest.files}

    def load_json(self, rel: str) -> Any:
        with open(self.file(rel), encoding="utf-8") as f:
            return json.load(f)

    def load_numpy(self, rel: str) -> Any:
        """``.npy`` → array; ``.npz`` → dict of arrays. Never unpickles."""
        p = self.file(rel)
        try:
            out = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise ArtifactCorrupted(f"{self.ref}: {rel} is not a plain numpy file: {e}") from e
        if isinstance(out, np.lib.npyio.NpzFile):
            with out:
                return {k: out[k] for k in out.files}
        return out

    def load_safetensors(self, rel: str) -> dict[str, Any]:
        from safetensors.torch import load_file

        return load_file(str(self.file(rel)))

    def __repr__(self) -> str:
        return f"Artifact({self.ref})"


class ArtifactWriter:
    """Builds an artifact in a temp directory; ``commit()`` verifies, hashes and renames it in place."""

    def __init__(self, registry: "Registry", kind: str, name: str, parents: list[str], params: dict[str, Any]):
        for label, v in (("kind", kind), ("name", name)):
            if not NAME_RE.match(v):
                raise ArtifactError(f"invalid artifact {label} {v!r}: use letters, digits, '.', '_' or '-'")
        self.registry = registry
        self.kind = kind
        self.name = name
        self.parents = [str(p) for p in parents]
        self.params = json.loads(json.dumps(params, default=str))  # canonical, JSON-able
        self.meta: dict[str, Any] = {}
        tmp_root = registry.root / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(dir=tmp_root, prefix=f"{kind}-{name}-"))
        self.artifact: Artifact | None = None

    # ---- writers -------------------------------------------------------------------------
    def _target(self, rel: str) -> Path:
        if rel.startswith("/") or ".." in rel.split("/") or rel == "manifest.json":
            raise ArtifactError(f"invalid artifact file name {rel!r}")
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_bytes(self, rel: str, data: bytes) -> Path:
        p = self._target(rel)
        with open(p, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return p

    def write_json(self, rel: str, obj: Any) -> Path:
        return self.write_bytes(rel, json.dumps(obj, ensure_ascii=False, sort_keys=False).encode("utf-8"))

    def write_numpy(self, rel: str, arr: Any) -> Path:
        arr = np.asarray(arr)
        if arr.dtype == object:
            raise ArtifactError(f"{rel}: object arrays would need pickle; store json instead")
        p = self._target(rel)
        with open(p, "wb") as f:
            np.save(f, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        return p

    def write_npz(self, rel: str, **arrays: Any) -> Path:
        for k, a in arrays.items():
            if np.asarray(a).dtype == object:
                raise ArtifactError(f"{rel}:{k}: object arrays would need pickle")
        p = self._target(rel)
        with open(p, "wb") as f:
            np.savez(f, **{k: np.asarray(a) for k, a in arrays.items()})
            f.flush()
            os.fsync(f.fileno())
        return p

    def write_safetensors(self, rel: str, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> Path:
        from safetensors.torch import save_file

        p = self._target(rel)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(p), metadata=metadata)
        with open(p, "rb+") as f:
            os.fsync(f.fileno())
        return p

    # ---- commit / abort ------------------------------------------------------------------
    def commit(self) -> Artifact:
        if self.artifact is not None:
            return self.artifact
        files = []
        for p in sorted(self.path.rglob("*")):
            if p.is_file():
                rel = p.relative_to(self.path).as_posix()
                files.append(FileEntry(path=rel, sha256=sha256_file(p), size=p.stat().st_size))
        if not files:
            raise ArtifactError(f"refusing to write an empty artifact {self.kind}/{self.name}")
        version = content_version(self.kind, self.name, self.parents, self.params, files)
        manifest = Manifest(
            kind=self.kind,
            name=self.name,
            version=version,
            parents=self.parents,
            params=self.params,
            files=files,
            meta=json.loads(json.dumps(self.meta, default=str)),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        with open(self.path / "manifest.json", "w", encoding="utf-8") as f:
            f.write(manifest.model_dump_json(indent=2))
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.path)
        os.chmod(self.path, 0o755)  # mkdtemp makes it private
        final = self.registry.root / self.kind / self.name / version
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self.path, final)
        except OSError:
            if not (final / "manifest.json").exists():
                raise
            shutil.rmtree(self.path, ignore_errors=True)  # identical content already stored
        _fsync_dir(final.parent)
        atomic_write_text(final.parent / LATEST, version + "\n")
        self.artifact = self.registry.load(f"{self.kind}/{self.name}@{version}")
        return self.artifact

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "ArtifactWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise


class Registry:
    """A directory of artifacts."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root or os.environ.get("GENREC_ARTIFACTS", DEFAULT_ROOT))

    # ---- writing -------------------------------------------------------------------------
    def create(self, kind: str, name: str, parents: list[str | Artifact] = (), params: dict[str, Any] | None = None) -> ArtifactWriter:
        refs = [p.ref if isinstance(p, Artifact) else str(p) for p in parents]
        return ArtifactWriter(self, kind, name, refs, params or {})

    # ---- reading -------------------------------------------------------------------------
    def resolve(self, ref: str | Ref) -> Path:
        r = parse_ref(ref)
        base = self.root / r.kind / r.name
        if not base.is_dir():
            known = ", ".join(self.names(r.kind)) or "none"
            raise ArtifactNotFound(f"no artifact {r.kind}/{r.name} in {self.root} (known {r.kind} names: {known})")
        if r.version == "latest":
            latest = base / LATEST
            if not latest.exists():
                raise ArtifactNotFound(f"{r.kind}/{r.name} has no LATEST pointer in {self.root}")
            version = latest.read_text().strip()
        else:
            matches = [p.name for p in base.iterdir() if p.is_dir() and p.name.startswith(r.version)]
            if not matches:
                raise ArtifactNotFound(f"no version {r.version} of {r.kind}/{r.name} in {self.root}")
            if len(matches) > 1:
                raise ArtifactNotFound(f"version prefix {r.version} of {r.kind}/{r.name} is ambiguous: {matches}")
            version = matches[0]
        path = base / version
        if not (path / "manifest.json").exists():
            raise ArtifactNotFound(f"{r.kind}/{r.name}@{version} has no manifest in {path}")
        return path

    def load(self, ref: str | Ref, verify: bool = True) -> Artifact:
        path = self.resolve(ref)
        try:
            manifest = Manifest.model_validate_json((path / "manifest.json").read_text(encoding="utf-8"))
        except (ValidationError, ValueError) as e:
            raise ArtifactCorrupted(f"invalid manifest in {path}: {e}") from e
        if manifest.version != path.name:
            raise ArtifactCorrupted(f"manifest of {path} claims version {manifest.version}")
        if verify:
            self.verify(path, manifest)
        return Artifact(path, manifest)

    @staticmethod
    def verify(path: Path, manifest: Manifest) -> None:
        expect = content_version(manifest.kind, manifest.name, manifest.parents, manifest.params, manifest.files)
        if expect != manifest.version:
            raise ArtifactCorrupted(f"{manifest.ref}: manifest content does not hash to its version ({expect})")
        for f in manifest.files:
            p = path / f.path
            if not p.is_file():
                raise ArtifactCorrupted(f"{manifest.ref}: file {f.path} is missing")
            size = p.stat().st_size
            if size != f.size:
                raise ArtifactCorrupted(f"{manifest.ref}: {f.path} has {size} bytes, manifest says {f.size}")
            digest = sha256_file(p)
            if digest != f.sha256:
                raise ArtifactCorrupted(f"{manifest.ref}: sha256 mismatch for {f.path} ({digest[:12]}… != {f.sha256[:12]}…)")

    def kinds(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def names(self, kind: str) -> list[str]:
        base = self.root / kind
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def list(self, kind: str | None = None) -> Iterator[Artifact]:
        for k in [kind] if kind else self.kinds():
            for n in self.names(k):
                try:
                    yield self.load(f"{k}/{n}@latest", verify=False)
                except ArtifactNotFound:
                    continue

    def lineage(self, ref: str | Ref) -> list[Artifact]:
        """The artifact and, depth first, every ancestor (each once)."""
        out: list[Artifact] = []
        seen: set[str] = set()
        stack = [str(ref)]
        while stack:
            r = stack.pop(0)
            art = self.load(r, verify=False)
            if art.ref in seen:
                continue
            seen.add(art.ref)
            out.append(art)
            stack[:0] = art.manifest.parents
        return out

    def clean_tmp(self) -> int:
        """Remove leftovers of interrupted writes; returns how many were removed."""
        tmp = self.root / ".tmp"
        if not tmp.is_dir():
            return 0
        n = 0
        for p in tmp.iterdir():
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        return n

