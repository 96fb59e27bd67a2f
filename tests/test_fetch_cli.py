"""`genrec data fetch` (mirror, download, checksum), the CLI front door, and errors."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import shutil
import threading
import zipfile
from dataclasses import replace

import pytest

from components.cli import main
from components.data import CATALOG, DataError, fetch
from importlib import import_module

fetch_mod = import_module("components.data.fetch")
from components.data.fetch import fetch_local


@pytest.fixture
def http_dir(tmp_path):
    """Serve a directory on 127.0.0.1; yields (directory, base_url)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_from_mirror(industrial_dir, tmp_path):
    dest = fetch("industrial", tmp_path / "raw", mirror=industrial_dir.parent)
    for f in CATALOG["industrial"].files:
        assert hashlib.sha256((dest / f.name).read_bytes()).hexdigest() == f.sha256
    assert (dest / "reference" / "minionerec.index.json").exists()


def test_fetch_rejects_tampered_mirror(industrial_dir, tmp_path):
    mirror = tmp_path / "mirror" / "Industrial_and_Scientific"
    shutil.copytree(industrial_dir, mirror)
    p = mirror / "Industrial_and_Scientific.test.inter"
    p.write_text(p.read_text() + "1\t2\t3\n")
    with pytest.raises(DataError, match="checksum mismatch for Industrial_and_Scientific.test.inter"):
        fetch("industrial", tmp_path / "raw", mirror=mirror.parent)
    assert not (tmp_path / "raw" / "industrial" / "Industrial_and_Scientific.test.inter").exists()


def test_fetch_download_files(industrial_dir, tmp_path, http_dir):
    root, url = http_dir
    for f in CATALOG["industrial"].files:
        shutil.copy(industrial_dir / f.name, root / f.name)
    dest = fetch("industrial", tmp_path / "raw", mirror=None, url=url)
    assert (dest / "Industrial_and_Scientific.item.json").read_bytes() == (industrial_dir / "Industrial_and_Scientific.item.json").read_bytes()
    (root / "Industrial_and_Scientific.valid.inter").write_text("tampered\n")
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch("industrial", tmp_path / "raw2", mirror=None, url=url)
    with pytest.raises(DataError, match="download of .* failed"):
        fetch("industrial", tmp_path / "raw3", mirror=None, url=url + "/missing")


def test_fetch_download_archive(ml100k_dir, tmp_path, http_dir, monkeypatch):
    """The ml-100k path: a wheel (zip) with CRLF files, archive and members checked by sha256."""
    root, url = http_dir
    buf = io.BytesIO()
    entry = CATALOG["ml-100k"]
    with zipfile.ZipFile(buf, "w") as z:
        for f in entry.files:
            z.writestr(f.member, (ml100k_dir / f.name).read_bytes().replace(b"\n", b"\r\n"))
    (root / "recbole.whl").write_bytes(buf.getvalue())
    patched = replace(entry, url=f"{url}/recbole.whl", archive_sha256=hashlib.sha256(buf.getvalue()).hexdigest())
    monkeypatch.setitem(fetch_mod.CATALOG, "ml-100k", patched)
    monkeypatch.delenv("GENREC_DATA_MIRROR", raising=False)
    dest = fetch("ml-100k", tmp_path / "raw")
    assert (dest / "ml-100k.inter").read_bytes() == (ml100k_dir / "ml-100k.inter").read_bytes()
    monkeypatch.setitem(fetch_mod.CATALOG, "ml-100k", replace(patched, archive_sha256="0" * 64))
    with pytest.raises(DataError, match="checksum mismatch for archive"):
        fetch("ml-100k", tmp_path / "raw2")


def test_fetch_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("GENREC_DATA_MIRROR", raising=False)
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        fetch("nope", tmp_path)
    with pytest.raises(DataError, match="no public download URL"):
        fetch("industrial", tmp_path)
    with pytest.raises(DataError, match="has no directory Industrial_and_Scientific"):
        fetch("industrial", tmp_path, mirror=tmp_path)


def test_fetch_local_own_dataset(ml100k_dir, tmp_path):
    dest = fetch_local("mydata", ml100k_dir, tmp_path / "raw")
    sums = (dest / "SHA256SUMS").read_text()
    assert "ml-100k.inter" in sums and (dest / "ml-100k.item").exists()


def test_cli_fetch_prepare_stats_show(industrial_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENREC_DATA_MIRROR", str(industrial_dir.parent))
    assert main(["--set", "data.dataset=ml-100k", "data", "fetch"]) == 0
    assert main(["--set", "data.dataset=ml-100k", "prepare", "--stats-out", "metrics/data.json"]) == 0
    out = capsys.readouterr().out
    assert "1,682 items, 943 users" in out
    stats = json.loads((tmp_path / "metrics" / "data.json").read_text())
    assert stats["users"] == 943 and stats["samples"]["test"] == 943
    assert main(["data", "stats", "dataset/ml-100k@latest"]) == 0
    assert "sparsity" in capsys.readouterr().out
    assert main(["artifacts", "show", "dataset/ml-100k"]) == 0
    assert "dataset/ml-100k@" in capsys.readouterr().out
    assert main(["artifacts", "verify", "dataset/ml-100k"]) == 0


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--set", "data.dataset=nope", "data", "fetch"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert main(["--set", "data.bogus=1", "prepare"]) == 2
    assert "data.bogus: Extra inputs are not permitted" in capsys.readouterr().err
    assert main(["prepare"]) == 2
    assert "run `genrec data fetch industrial` first" in capsys.readouterr().err
    assert main(["artifacts", "show", "dataset/none"]) == 2
    assert "no artifact dataset/none" in capsys.readouterr().err
