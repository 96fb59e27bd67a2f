"""The checked-in gRPC stubs are exactly what protoc generates from proto/ (no drift)."""

from __future__ import annotations


from components.serving import protogen


def test_stubs_match_protos(tmp_path):
    fresh = tmp_path / "pb"
    protogen.generate(fresh)
    checked_in = protogen.OUT
    names = sorted(p.relative_to(fresh).as_posix() for p in fresh.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(checked_in).as_posix() for p in checked_in.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for n in names:
        assert (fresh / n).read_text() == (checked_in / n).read_text(), f"{n} drifted: run python -m components.serving.protogen"
