"""``skill_distill.io.atomic_directory``: the one way a directory (an HF export, a cached asset) is published."""

from __future__ import annotations

import os
import stat

import pytest

from skill_distill.io import OutputError, atomic_directory, atomic_write, read_json, write_json


def test_a_directory_is_published_whole_with_shared_permissions(tmp_path):
    target = tmp_path / "export"
    with atomic_directory(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".export.")
        (tmp / "config.json").write_text("{}")
        assert not target.exists()  # nothing under the final name until the block succeeds
    assert (target / "config.json").read_text() == "{}"
    assert os.listdir(tmp_path) == ["export"]  # no temporary left beside it
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask  # mkdtemp alone would leave 0700
    assert stat.S_IMODE((target / "config.json").stat().st_mode) == 0o666 & ~umask


def test_replace_swaps_the_old_directory_and_a_failure_keeps_it(tmp_path):
    target = tmp_path / "export"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("crash while writing")
    assert (target / "weights").read_text() == "old" and os.listdir(tmp_path) == ["export"]
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "new" and os.listdir(tmp_path) == ["export"]


def test_without_replace_the_first_publisher_wins(tmp_path):
    target = tmp_path / "asset"
    with atomic_directory(target, replace=False) as first:
        (first / "who").write_text("first")
    with atomic_directory(target, replace=False) as second:  # e.g. a concurrent process that built it too
        (second / "who").write_text("second")
    assert (target / "who").read_text() == "first" and os.listdir(tmp_path) == ["asset"]


def _write_to_a_full_device() -> None:
    """What a write on a full filesystem meets: the kernel's ENOSPC (``/dev/full`` always reports it)."""
    with open("/dev/full", "w") as f:
        f.write("x" * 4096)
        f.flush()


def test_a_full_disk_is_one_line_naming_the_output_and_keeps_the_earlier_one(tmp_path):
    """ENOSPC while writing a file or filling a directory: OutputError, one line naming the output and the fix; the
    earlier output stays and no temporary is left (issue 28: report.json and export tracebacks)."""
    report = tmp_path / "report.json"
    write_json(report, {"old": True})
    with pytest.raises(OutputError, match=rf"^{report}: No space left on device while writing it; free space") as e:
        with atomic_write(report) as f:
            f.write("{")
            _write_to_a_full_device()
    assert "\n" not in str(e.value) and e.value.__cause__ is None
    assert read_json(report) == {"old": True} and os.listdir(tmp_path) == ["report.json"]

    export = tmp_path / "export"
    with pytest.raises(OutputError, match=rf"^{export}: No space left on device"):
        with atomic_directory(export) as tmp:
            (tmp / "config.json").write_text("{}")
            _write_to_a_full_device()
    assert sorted(os.listdir(tmp_path)) == ["report.json"]

    with pytest.raises(PermissionError):  # other OS errors are not disguised as a full disk
        with atomic_write(report) as f:
            raise PermissionError(13, "Permission denied")
