"""Run-log retention: which logs a pass deletes, and how a log over its cap is cut."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.daemon.retention import LogFile, LogPolicy, cut, plan

NOW = 1_000_000.0


def _files(*ages: float, size: int = 100) -> list[LogFile]:
    return [LogFile(f"t{i}.log", size, NOW - age) for i, age in enumerate(ages)]


def _names(files: list[LogFile]) -> list[str]:
    return [f.name for f in files]


def test_logs_older_than_the_retention_go() -> None:
    files = _files(10, 500, 20, 1000)
    assert _names(plan(files, LogPolicy(max_age_s=100), NOW, ())) == ["t3.log", "t1.log"]


def test_the_oldest_go_until_the_count_and_the_bytes_fit() -> None:
    files = _files(5, 4, 3, 2)
    assert _names(plan(files, LogPolicy(max_files=3), NOW, ())) == ["t0.log"]
    assert _names(plan(files, LogPolicy(max_dir_bytes=250), NOW, ())) == ["t0.log", "t1.log"]
    # Both budgets at once: the stricter decides.
    both = LogPolicy(max_files=3, max_dir_bytes=150)
    assert _names(plan(files, both, NOW, ())) == ["t0.log", "t1.log", "t2.log"]
    assert plan(files, LogPolicy(), NOW, ()) == []


def test_live_runs_young_logs_and_the_fork_servers_log_are_never_deleted() -> None:
    files = [
        LogFile("live.log", 100, NOW - 1000),
        LogFile("fork-server.log", 100, NOW - 1000),
        LogFile("young.log", 100, NOW - 0.2),  # a run being spawned: not in the table yet
        LogFile("old.log", 100, NOW - 1000),
    ]
    policy = LogPolicy(max_age_s=10, max_files=0, max_dir_bytes=0)
    assert _names(plan(files, policy, NOW, {"live.log"})) == ["old.log"]


def test_a_live_runs_log_still_counts_against_the_budget() -> None:
    files = [LogFile("live.log", 1000, NOW - 50), *_files(40, 30, size=100)]
    policy = LogPolicy(max_dir_bytes=1100)
    assert _names(plan(files, policy, NOW, {"live.log"})) == ["t0.log"]


def test_a_log_over_its_cap_keeps_its_first_half_and_says_what_was_cut(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    path.write_bytes(b"HEAD" + b"x" * 9996)
    assert cut(path, 4000) == 8000
    data = path.read_bytes()
    assert data.startswith(b"HEAD") and data[:2000] == b"HEAD" + b"x" * 1996
    assert b"8000 bytes of this log cut here" in data[2000:]
    assert cut(path, 4000) == 0  # under the cap now
    # A second cut's note counts every byte cut so far.
    path.write_bytes(data + b"y" * 5000)
    dropped = cut(path, 4000, cut_before=8000)
    assert f"{8000 + dropped} bytes".encode() in path.read_bytes()


def test_a_writer_holding_the_log_goes_on_after_the_cut_without_a_hole(tmp_path: Path) -> None:
    # What a run does: its stdout is the log opened O_APPEND (both spawners).
    path = tmp_path / "t.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(fd, b"a" * 100_000)
        cut(path, 10_000)
        os.write(fd, b"LATER\n")
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert len(data) < 5_200 and data.endswith(b"later output follows]\nLATER\n")
    assert b"\0" not in data


def test_a_symlink_or_a_hard_link_is_never_cut(tmp_path: Path) -> None:
    # A run may replace its log: the root daemon must not truncate what it points to.
    target = tmp_path / "precious"
    target.write_bytes(b"p" * 10_000)
    link = tmp_path / "sym.log"
    link.symlink_to(target)
    with pytest.raises(OSError):
        cut(link, 100)
    hard = tmp_path / "hard.log"
    os.link(target, hard)
    assert cut(hard, 100) == 0
    assert target.read_bytes() == b"p" * 10_000


@pytest.mark.anyio
async def test_a_pass_prunes_the_directory_and_leaves_what_is_not_a_log(tmp_path: Path) -> None:
    from supervisor.daemon.retention import LogRetention

    for i in range(20):
        path = tmp_path / f"t{i:02d}.log"
        path.write_bytes(b"x" * (50_000 if i == 19 else 100))
        os.utime(path, (NOW, NOW + i))  # t00 oldest
    os.mkfifo(tmp_path / "fifo.log")
    (tmp_path / "link.log").symlink_to(tmp_path / "t00.log")
    (tmp_path / "notes.txt").write_text("not a log")
    policy = LogPolicy(max_files=5, max_file_bytes=10_000)
    retention = LogRetention(tmp_path, policy, 60, lambda: ["t00"])
    report = await retention.prune()
    assert report is not None and report.deleted == 15 and report.cut == {"t19.log": 45_000}
    left = sorted(os.listdir(tmp_path))
    assert left == [
        "fifo.log",
        "link.log",
        "notes.txt",
        "t00.log",  # a live run's: kept, and counted
        "t16.log",
        "t17.log",
        "t18.log",
        "t19.log",
    ]
    assert (tmp_path / "t19.log").stat().st_size < 5_200
