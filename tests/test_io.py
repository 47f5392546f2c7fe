"""``skill_distill.io.atomic_directory``: the one way a directory (an HF export, a cached asset) is published."""

from __future__ import annotations

import os
import stat

import pytest

from skill_distill.io import atomic_directory


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
