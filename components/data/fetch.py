"""Dataset catalog and ``genrec data fetch NAME``: place raw files under ``data/raw/<NAME>/``.

Sources, in order:
1. a local mirror directory (``--mirror`` or env ``GENREC_DATA_MIRROR``) holding ``<mirror_dir>/``;
2. the dataset's public URL (or ``--url`` for a base URL of your own).
Every file is verified against the catalog's sha256 before it is placed; files are written to a
temp name and renamed, so an interrupted fetch leaves nothing that looks complete.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from components.data.dataset import DataError
from components.registry.store import atomic_write_bytes


@dataclass(frozen=True)
class RawFile:
    name: str
    sha256: str
    member: str | None = None  # path inside the downloaded archive, if any
    crlf_to_lf: bool = False  # the archive ships CRLF line ends; the catalog hash is of LF text


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    format: str
    mirror_dir: str
    files: tuple[RawFile, ...]
    max_history: int
    url: str | None = None  # a file base URL, or one archive URL when files have `member`
    archive_sha256: str | None = None
    description: str = ""
    extra_files: tuple[str, ...] = field(default_factory=tuple)


CATALOG: dict[str, CatalogEntry] = {
    "industrial": CatalogEntry(
        name="industrial",
        format="minionerec",
        mirror_dir="Industrial_and_Scientific",
        max_history=10,
        description="Amazon'18 Industrial_and_Scientific, MiniOneRec preprocessing and split",
        files=(
            RawFile("Industrial_and_Scientific.item.json", "937600c7a03652f55864a1d12d6e9fe8ca3e24ecc4e255a88216b25c5f949496"),
            RawFile("Industrial_and_Scientific.inter.json", "bcffb33274493b6f451ee69e144c90766bd7e6cd4777fa54f78a0beb0526ffae"),
            RawFile("Industrial_and_Scientific.train.inter", "788d1018bf6710c45e929c65402443700e92494dd9e9b8b20aa3238ee4a7bb1f"),
            RawFile("Industrial_and_Scientific.valid.inter", "ffe5b8999f2a97cd0e9d3aad2113de8d39bb93cf1a224f531c0803bb127f0968"),
            RawFile("Industrial_and_Scientific.test.inter", "bf47aa9c6d1df2c8d3420fdb9cd49195df26d895b652d65d2ba727c1233681cb"),
        ),
        extra_files=("reference/minionerec.index.json",),
    ),
    "ml-100k": CatalogEntry(
        name="ml-100k",
        format="recbole",
        mirror_dir="ml-100k",
        max_history=20,
        description="MovieLens 100K as RecBole atomic files (shipped inside the recbole 1.2.0 wheel on PyPI)",
        url="https://files.pythonhosted.org/packages/1e/d1/81756635abf971deeaa8180dae167e6ee867f9ffe13dc128a51fb9efe710/recbole-1.2.0-py3-none-any.whl",
        archive_sha256="075820e2ea8f182ec4d30c4ec9067d5ac7b07c2f5e3ae1adeb8a5fbee2d4204d",
        files=(
            RawFile("ml-100k.inter", "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff", "recbole/dataset_example/ml-100k/ml-100k.inter", True),
            RawFile("ml-100k.item", "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532", "recbole/dataset_example/ml-100k/ml-100k.item", True),
            RawFile("ml-100k.user", "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972", "recbole/dataset_example/ml-100k/ml-100k.user", True),
        ),
    ),
}


def catalog_entry(name: str) -> CatalogEntry:
    try:
        return CATALOG[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {sorted(CATALOG)} (or set data.format and data.path for your own)") from None


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _place(dest: Path, data: bytes, expect: str, origin: str) -> None:
    got = _sha256_bytes(data)
    if got != expect:
        raise DataError(f"checksum mismatch for {dest.name} from {origin}: sha256 {got} != catalog {expect}")
    atomic_write_bytes(dest, data)


def _download(url: str, timeout: float = 120.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (catalog or user URL)
            return r.read()
    except Exception as e:  # urllib raises several unrelated types
        raise DataError(f"download of {url} failed: {e}") from None


def is_fetched(name: str, dest_root: str | Path = "data/raw") -> bool:
    entry = catalog_entry(name)
    d = Path(dest_root) / name
    return all((d / f.name).is_file() for f in entry.files)


def fetch(name: str, dest_root: str | Path = "data/raw", mirror: str | Path | None = None, url: str | None = None, force: bool = False) -> Path:
    """Place the dataset's raw files under ``dest_root/name``; returns that directory."""
    entry = catalog_entry(name)
    dest = Path(dest_root) / name
    mirror = mirror if mirror is not None else os.environ.get("GENREC_DATA_MIRROR")
    if not force and dest.is_dir() and all(
        (dest / f.name).is_file() and _sha256_bytes((dest / f.name).read_bytes()) == f.sha256 for f in entry.files
    ):
        return dest

    if mirror and url is None:
        src = Path(mirror) / entry.mirror_dir
        if not src.is_dir():
            raise DataError(f"mirror {mirror} has no directory {entry.mirror_dir}/ for dataset {name!r}")
        for f in entry.files:
            p = src / f.name
            if not p.is_file():
                raise DataError(f"mirror is missing {p}")
            _place(dest / f.name, p.read_bytes(), f.sha256, str(p))
        for extra in entry.extra_files:  # optional reference files, copied as they are
            p = src / extra
            if p.is_file():
                (dest / extra).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dest / extra)
        return dest

    base = url or entry.url
    if not base:
        raise DataError(
            f"dataset {name!r} has no public download URL in the catalog: set GENREC_DATA_MIRROR to a "
            f"directory holding {entry.mirror_dir}/, or pass --url BASE (files are checked against the catalog's sha256)"
        )
    if any(f.member for f in entry.files) and url is None:
        blob = _download(base)
        if entry.archive_sha256 and _sha256_bytes(blob) != entry.archive_sha256:
            raise DataError(f"checksum mismatch for archive {base}")
        try:
            zf = zipfile.ZipFile(io.BytesIO(blob))
        except zipfile.BadZipFile:
            raise DataError(f"{base} is not a zip archive") from None
        with zf:
            for f in entry.files:
                try:
                    data = zf.read(f.member)
                except KeyError:
                    raise DataError(f"archive {base} has no member {f.member}") from None
                if f.crlf_to_lf:
                    data = data.replace(b"\r\n", b"\n")
                _place(dest / f.name, data, f.sha256, base)
        return dest
    for f in entry.files:
        file_url = base.rstrip("/") + "/" + f.name
        _place(dest / f.name, _download(file_url), f.sha256, file_url)
    return dest


def fetch_local(name: str, source: str | Path, dest_root: str | Path = "data/raw") -> Path:
    """Your own dataset: copy the files of ``source`` to ``dest_root/name`` and record their
    sha256 in ``SHA256SUMS`` (so DVC and later runs see exactly what was prepared)."""
    src = Path(source)
    if not src.is_dir():
        raise DataError(f"data.path {src} is not a directory")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise DataError(f"data.path {src} holds no files")
    dest = Path(dest_root) / name
    sums = []
    for p in files:
        rel = p.relative_to(src).as_posix()
        data = p.read_bytes()
        digest = _sha256_bytes(data)
        _place(dest / rel, data, digest, str(p))
        sums.append(f"{digest}  {rel}")
    _place(dest / "SHA256SUMS", ("\n".join(sums) + "\n").encode(), _sha256_bytes(("\n".join(sums) + "\n").encode()), "computed")
    return dest
