"""Workspace snapshots of durable runs: a size-capped tar with its SHA-256, and a safe restore.

:func:`pack` archives a run's working directory (regular files, directories and
symlinks; device files and FIFOs are left out) and gives up as soon as the archive
would exceed its cap, so an oversized workspace never costs more than the cap in
memory. :func:`restore` checks the SHA-256 and then every member *before* writing
anything (:func:`check_members`), and only then extracts with tarfile's ``"data"``
filter.

Why both checks: a snapshot is read back from Redis, so it is untrusted (anyone
with write access to the key can plant one). The ``"data"`` filter alone

- rewrites rather than refuses: it strips a leading ``/`` and extracts
  ``/etc/passwd`` as ``etc/passwd``, so a planted absolute path would pass silently;
- refuses member by member while extracting, so an archive refused at its tenth
  member leaves nine behind in the workspace;
- had bypasses in the Python this project runs on (3.11.7): symlink chains and
  over-long paths that defeat its ``realpath`` check (CVE-2025-4517, CVE-2025-4138,
  CVE-2025-4330, CVE-2024-12718, fixed in 3.11.13).

:func:`check_members` refuses the whole archive, naming the first bad member, for an
absolute name, a ``..`` component, a link whose target leaves the directory, a
member written through a symlink (the chains those CVEs use), a hard link to
anything but an earlier regular file, a device file or FIFO, a sparse member, an
over-long name, and members whose sizes add up past the cap. The filter stays as
a second line: it also drops set-uid bits and foreign ownership.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Snapshot",
    "SnapshotTooLargeError",
    "UnsafeSnapshotError",
    "check_members",
    "pack",
    "restore",
]

DEFAULT_MAX_BYTES: Final = 16 * 1024 * 1024
_MAX_NAME: Final = 1024  # bytes of a member's name or link target; PATH_MAX tricks need more


class SnapshotTooLargeError(Exception):
    """The workspace's archive would exceed the cap: the snapshot is skipped."""


class UnsafeSnapshotError(Exception):
    """A snapshot that must not be restored (bad checksum or an unsafe member); the message
    says which member and why."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A workspace archive (uncompressed tar) and the SHA-256 of its bytes (hex)."""

    data: bytes
    sha256: str

    @classmethod
    def of(cls, data: bytes) -> Snapshot:
        """The snapshot of ``data``, its digest computed here."""
        return cls(data, hashlib.sha256(data).hexdigest())


class _CappedBuffer(io.BytesIO):
    """A buffer that raises once more than ``cap`` bytes were written to it."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self._cap = cap

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self._cap:
            raise SnapshotTooLargeError(f"the workspace archive exceeds {self._cap} bytes")
        return super().write(data)


def _keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    # Device files and FIFOs cannot be restored (check_members refuses them), and reading a
    # FIFO would block; ownership is meaningless on another node.
    if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack(directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Snapshot:
    """Archives ``directory``'s contents (names relative to it; symlinks kept as links, never
    followed). Raises :class:`SnapshotTooLargeError` as soon as the archive passes
    ``max_bytes``."""
    buffer = _CappedBuffer(max_bytes)
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(directory)):
            tar.add(directory / entry, arcname=entry, recursive=True, filter=_keep)
    return Snapshot.of(buffer.getvalue())


def _inside(name: str) -> bool:
    """Whether the normalized relative ``name`` stays inside the directory."""
    return name not in ("", ".") and not name.startswith("../") and name != ".."


def check_members(tar: tarfile.TarFile, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Raises :class:`UnsafeSnapshotError` naming the first member of ``tar`` that could
    write outside the extraction directory or create something other than a regular file,
    directory or contained link."""
    total = 0
    regular: set[str] = set()
    links: set[str] = set()
    for member in tar.getmembers():
        name = member.name
        what = f"snapshot member {name[:200]!r}"
        if len(name.encode()) > _MAX_NAME or len(member.linkname.encode()) > _MAX_NAME:
            raise UnsafeSnapshotError(f"{what}: name or link target over {_MAX_NAME} bytes")
        if name.startswith("/") or "\\" in name or "\0" in name:
            raise UnsafeSnapshotError(f"{what}: absolute path")
        if ".." in name.split("/"):
            raise UnsafeSnapshotError(f"{what}: '..' component")
        norm = posixpath.normpath(name)
        if not _inside(norm):
            raise UnsafeSnapshotError(f"{what}: outside the directory")
        if member.ischr() or member.isblk() or member.isfifo():
            raise UnsafeSnapshotError(f"{what}: device file or FIFO")
        if member.issparse():
            raise UnsafeSnapshotError(f"{what}: sparse file")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise UnsafeSnapshotError(f"{what}: unsupported type {member.type!r}")
        parent = posixpath.dirname(norm)
        while parent:
            if parent in links:
                raise UnsafeSnapshotError(f"{what}: written through the symlink {parent!r}")
            parent = posixpath.dirname(parent)
        if member.issym():
            target = member.linkname
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(norm), target))
            if target.startswith("/") or not (resolved == "." or _inside(resolved)):
                raise UnsafeSnapshotError(
                    f"{what}: symlink to {target[:200]!r} leaves the directory"
                )
            links.add(norm)
        elif member.islnk():
            target = posixpath.normpath(member.linkname)
            if member.linkname.startswith("/") or target not in regular:
                raise UnsafeSnapshotError(
                    f"{what}: hard link to {member.linkname[:200]!r}, not an earlier file of "
                    "the snapshot"
                )
        elif member.isfile():
            regular.add(norm)
            total += member.size
            if total > max_bytes:
                raise UnsafeSnapshotError(
                    f"{what}: the files add up to more than {max_bytes} bytes"
                )


def restore(snapshot: Snapshot, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Extracts ``snapshot`` into the empty ``directory`` after checking its SHA-256 and every
    member; returns the number of members. Raises :class:`UnsafeSnapshotError` (nothing
    written) when either check fails."""
    digest = hashlib.sha256(snapshot.data).hexdigest()
    if digest != snapshot.sha256:
        raise UnsafeSnapshotError(
            f"snapshot checksum mismatch: stored sha256 {snapshot.sha256[:64]!r}, "
            f"the data has {digest}"
        )
    if any(directory.iterdir()):
        # A link already in the directory could redirect a member that passed the checks.
        raise UnsafeSnapshotError(f"restore target {directory} is not empty")
    try:
        with tarfile.open(fileobj=io.BytesIO(snapshot.data), mode="r:") as tar:
            check_members(tar, max_bytes)
            tar.extractall(directory, filter="data")
            return len(tar.getmembers())
    except tarfile.FilterError as exc:
        raise UnsafeSnapshotError(f"snapshot refused by tarfile's data filter: {exc}") from exc
    except tarfile.TarError as exc:
        raise UnsafeSnapshotError(f"snapshot is not a valid tar archive: {exc}") from exc
