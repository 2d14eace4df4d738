"""Archive moves: atomic, never overwrite, identical copies de-duplicated, link-less
filesystems handled, quarantine writes its .error file."""
from __future__ import annotations

import errno
import os

import pytest

from stability_collector import archive
from stability_collector.archive import ArchiveError, move_without_overwrite, quarantine
from stability_collector.ingest import SettleTracker


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_move_creates_archive_and_keeps_bytes(tmp_path):
    src = write(tmp_path / "Stability_20180910T090910.txt", "A")
    target = move_without_overwrite(src, tmp_path / "ingested")
    assert target == tmp_path / "ingested" / src.name and target.read_text() == "A" and not src.exists()


def test_never_overwrites_and_deduplicates_identical(tmp_path):
    dest = tmp_path / "ingested"
    write(dest / "Stability_20180910T090910.txt", "first")
    write(dest / "Stability_20180910T090910~1.txt", "second")
    src = write(tmp_path / "Stability_20180910T090910.txt", "third")
    assert move_without_overwrite(src, dest).name == "Stability_20180910T090910~2.txt"
    src = write(tmp_path / "Stability_20180910T090910.txt", "second")     # identical to ~1
    assert move_without_overwrite(src, dest).name == "Stability_20180910T090910~1.txt"
    assert not src.exists()
    assert [p.read_text() for p in sorted(dest.iterdir())] == ["first", "second", "third"]


def test_crash_between_link_and_unlink_recovers(tmp_path):
    dest = tmp_path / "ingested"
    src = write(tmp_path / "Stability_20180910T090910.txt", "same")
    os.link(src, dest.mkdir() or dest / src.name)     # the state after a crash mid-move
    assert move_without_overwrite(src, dest) == dest / src.name
    assert not src.exists() and len(list(dest.iterdir())) == 1


def test_filesystem_without_hard_links_falls_back_to_checked_rename(tmp_path, monkeypatch):
    def no_links(a, b):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(archive.os, "link", no_links)
    dest = tmp_path / "ingested"
    write(dest / "Stability_20180910T090910.txt", "old")
    src = write(tmp_path / "Stability_20180910T090910.txt", "new")
    assert move_without_overwrite(src, dest).name == "Stability_20180910T090910~1.txt"
    assert (dest / "Stability_20180910T090910.txt").read_text() == "old"


def test_unmovable_report_raises_and_stays(tmp_path):
    src = write(tmp_path / "Stability_20180910T090910.txt", "x")
    write(tmp_path / "ingested", "a file where the archive directory should be")
    with pytest.raises(ArchiveError) as info:
        move_without_overwrite(src, tmp_path / "ingested")
    assert src.name in str(info.value) and src.exists()


def test_quarantine_writes_error_beside_the_file(tmp_path):
    src = write(tmp_path / "Stability_20180910T090910.txt", "garbage")
    target = quarantine(src, tmp_path / "failed", "x.txt:3: expected header, found 'y'")
    error = target.with_name(target.name + ".error").read_text()
    assert target.read_text() == "garbage" and error.startswith("x.txt:3: expected header")
    assert str(src) in error


def test_settle_tracker_restarts_the_clock_when_a_file_changes(tmp_path):
    now = [1000.0]
    tracker = SettleTracker(10, clock=lambda: now[0])
    f = write(tmp_path / "Stability_20180910T090910.txt", "a")
    assert not tracker.observe(f, f.stat())
    now[0] += 9
    assert not tracker.observe(f, f.stat())
    f.write_text("ab")
    now[0] += 2
    assert not tracker.observe(f, f.stat())        # changed: starts again
    now[0] += 9.9
    assert not tracker.observe(f, f.stat())
    now[0] += 0.2
    assert tracker.observe(f, f.stat())
