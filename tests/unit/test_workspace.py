"""Workspace snapshots: pack within a cap, and a restore that refuses anything leaving the
directory before it writes a byte."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from agent_runtime.workspace import (
    Snapshot,
    SnapshotTooLargeError,
    UnsafeSnapshotError,
    pack,
    restore,
)


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> Snapshot:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return Snapshot.of(buffer.getvalue())


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def test_a_workspace_round_trips_with_its_links_and_without_its_fifo(tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    (source / "sub").mkdir(parents=True)
    target.mkdir()
    (source / "notes.txt").write_text("written by a tool")
    (source / "sub" / "data.bin").write_bytes(os.urandom(5000))
    (source / "latest").symlink_to("sub/data.bin")
    os.mkfifo(source / "pipe")
    snapshot = pack(source)
    restore(snapshot, target)
    assert (target / "notes.txt").read_text() == "written by a tool"
    assert (target / "sub" / "data.bin").read_bytes() == (source / "sub" / "data.bin").read_bytes()
    assert os.readlink(target / "latest") == "sub/data.bin"
    assert not (target / "pipe").exists()


def test_pack_gives_up_past_its_cap(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(os.urandom(200_000))
    with pytest.raises(SnapshotTooLargeError, match="exceeds 100000 bytes"):
        pack(tmp_path, max_bytes=100_000)
    assert pack(tmp_path, max_bytes=300_000).data


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_file("../escape"), "'..' component"),
        (_file("a/../../escape"), "'..' component"),
        (_file("/etc/adk-escape"), "absolute path"),
        (_special("root", tarfile.SYMTYPE, "/"), "leaves the directory"),
        (_special("up", tarfile.SYMTYPE, "../.."), "leaves the directory"),
        (_special("sub/up", tarfile.SYMTYPE, "../../x"), "leaves the directory"),
        (_special("hard", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
        (_special("null", tarfile.CHRTYPE), "device file or FIFO"),
        (_special("disk", tarfile.BLKTYPE), "device file or FIFO"),
        (_special("fifo", tarfile.FIFOTYPE), "device file or FIFO"),
        (_file("x" * 2000), "over 1024 bytes"),
    ],
)
def test_an_unsafe_member_refuses_the_whole_snapshot(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], reason: str
) -> None:
    target = tmp_path / "ws"
    target.mkdir()
    # A good member first: the refusal must leave nothing behind, not even it.
    with pytest.raises(UnsafeSnapshotError, match=reason):
        restore(_tar(_file("good.txt"), member), target)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_a_file_written_through_a_contained_symlink_is_refused(tmp_path: Path) -> None:
    # The symlink-chain shape of the tarfile filter bypasses (CVE-2025-4517 and kin).
    target = tmp_path / "ws"
    target.mkdir()
    snapshot = _tar(_special("d", tarfile.SYMTYPE, "."), _file("d/f"))
    with pytest.raises(UnsafeSnapshotError, match="written through the symlink 'd'"):
        restore(snapshot, target)


def test_a_snapshot_whose_bytes_do_not_match_its_sha256_is_refused(tmp_path: Path) -> None:
    good = _tar(_file("a.txt"))
    with pytest.raises(UnsafeSnapshotError, match="checksum mismatch"):
        restore(Snapshot(good.data[:-1] + b"\1", good.sha256), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_files_adding_up_past_the_cap_are_refused(tmp_path: Path) -> None:
    snapshot = _tar(_file("a", b"x" * 600), _file("b", b"y" * 600))
    with pytest.raises(UnsafeSnapshotError, match="more than 1000 bytes"):
        restore(snapshot, tmp_path, max_bytes=1000)


def test_garbage_is_refused_as_not_a_tar(tmp_path: Path) -> None:
    with pytest.raises(UnsafeSnapshotError, match="not a valid tar"):
        restore(Snapshot.of(b"\x00not a tar" * 100), tmp_path)


def test_restore_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "already").write_text("")
    with pytest.raises(UnsafeSnapshotError, match="not empty"):
        restore(_tar(_file("a")), tmp_path)
