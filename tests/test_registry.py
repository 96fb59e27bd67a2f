"""Registry: atomic writes, content versions, references, corruption detection, lineage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.registry import (
    ArtifactCorrupted,
    ArtifactError,
    ArtifactNotFound,
    Registry,
    parse_ref,
)


def _write(registry, name="demo", value=1.0, parents=()):
    with registry.create("thing", name, parents=list(parents), params={"value": value}) as w:
        w.write_numpy("x.npy", np.full(4, value, dtype=np.float32))
        w.write_json("info.json", {"value": value})
        w.meta["note"] = "test"
    return w.artifact


def test_roundtrip_and_latest(registry):
    a = _write(registry, value=1.0)
    assert a.ref.startswith("thing/demo@") and len(a.manifest.version) == 16
    loaded = registry.load("thing/demo@latest")
    assert loaded.ref == a.ref
    np.testing.assert_array_equal(loaded.load_numpy("x.npy"), np.ones(4, dtype=np.float32))
    assert loaded.load_json("info.json") == {"value": 1.0}
    assert registry.load("thing/demo").ref == a.ref  # no @ means latest
    assert registry.load(f"thing/demo@{a.manifest.version[:6]}").ref == a.ref  # unique prefix
    b = _write(registry, value=2.0)
    assert b.ref != a.ref
    assert registry.load("thing/demo@latest").ref == b.ref
    assert registry.load(a.ref).ref == a.ref  # old versions stay addressable


def test_version_is_content_hash(tmp_path):
    a = _write(Registry(tmp_path / "r1"), value=3.0)
    b = _write(Registry(tmp_path / "r2"), value=3.0)
    assert a.manifest.version == b.manifest.version  # same content, same version, any machine
    again = _write(Registry(tmp_path / "r1"), value=3.0)  # rewriting identical content is a no-op
    assert again.ref == a.ref


def test_failed_write_leaves_nothing(registry):
    with pytest.raises(RuntimeError):
        with registry.create("thing", "broken") as w:
            w.write_numpy("x.npy", np.zeros(3))
            raise RuntimeError("crash mid-write")
    assert not (registry.root / "thing" / "broken").exists()
    assert list((registry.root / ".tmp").iterdir()) == []
    with pytest.raises(ArtifactNotFound):
        registry.load("thing/broken")


def test_no_pickle_and_no_empty(registry):
    with pytest.raises(ArtifactError, match="pickle"):
        with registry.create("thing", "obj") as w:
            w.write_numpy("x.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ArtifactError, match="empty"):
        with registry.create("thing", "empty"):
            pass
    assert not (registry.root / "thing" / "obj").exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_corruption_detected(registry, damage):
    a = _write(registry)
    f = a.path / "x.npy"
    if damage == "flip":
        data = bytearray(f.read_bytes())
        data[-1] ^= 0xFF
        f.write_bytes(bytes(data))
        match = "sha256 mismatch"
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-2])
        match = "bytes"
    elif damage == "delete":
        f.unlink()
        match = "missing"
    else:
        m = json.loads((a.path / "manifest.json").read_text())
        m["params"]["value"] = 99
        (a.path / "manifest.json").write_text(json.dumps(m))
        match = "does not hash"
    with pytest.raises(ArtifactCorrupted, match=match):
        registry.load(a.ref)


def test_invalid_manifest(registry):
    a = _write(registry)
    (a.path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactCorrupted, match="invalid manifest"):
        registry.load(a.ref)


@pytest.mark.parametrize("ref", ["", "nokind", "a/b/c", "thing/demo@XYZ", "../x/y"])
def test_malformed_refs(ref):
    with pytest.raises(ArtifactNotFound):
        parse_ref(ref)


def test_unknown_refs(registry):
    _write(registry)
    with pytest.raises(ArtifactNotFound, match="known thing names: demo"):
        registry.load("thing/other")
    with pytest.raises(ArtifactNotFound, match="no version"):
        registry.load("thing/demo@abcdef")


def test_lineage(registry):
    root = _write(registry, name="root")
    mid = _write(registry, name="mid", parents=[root.ref])
    leaf = _write(registry, name="leaf", parents=[mid.ref, root.ref])
    chain = [a.ref for a in registry.lineage(leaf.ref)]
    assert chain == [leaf.ref, mid.ref, root.ref]
    assert [a.manifest.name for a in registry.list("thing")] == ["leaf", "mid", "root"]
