"""Pinned public data files (``asset:tree/...``, ``asset:bench/...``, ``asset:corpus/...``): the registry's facts
against the mirror, and the resolver's mirror, cache and download paths. The download is served by a local HTTP
server on 127.0.0.1 (these machines cannot reach GitHub) holding the files in raw.githubusercontent.com's layout."""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from skill_distill import assets
from skill_distill.assets import DATA_ASSETS, DATA_ENV, URL_ENV, resolve
from skill_distill.eval_sets import load_benchmark
from skill_distill.io import DataError
from skill_distill.skill_tree import SkillTree


def test_every_pin_is_a_full_commit_and_checksum_that_the_mirror_matches(shared_dir):
    for name, a in DATA_ASSETS.items():
        assert re.fullmatch(r"[0-9a-f]{40}", a.commit) and re.fullmatch(r"[0-9a-f]{64}", a.sha256), name
        assert a.url(assets.DEFAULT_URL) == f"https://raw.githubusercontent.com/{a.repo}/{a.commit}/{a.path}"
        data = (shared_dir / a.mirror).read_bytes()
        assert len(data) == a.bytes and hashlib.sha256(data).hexdigest() == a.sha256, name
    assert {n.split("/")[0] for n in DATA_ASSETS} == {"tree", "bench", "corpus"}


def test_the_default_url_is_raw_github_and_the_variable_overrides_it(monkeypatch):
    a = DATA_ASSETS["bench/aime24"]
    monkeypatch.delenv(URL_ENV, raising=False)
    assert a.url() == ("https://raw.githubusercontent.com/QwenLM/Qwen2.5-Math/a45202bd16f1ec06f433442dc1152d0074773465/"
                       "evaluation/data/aime24/test.jsonl")
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9/")
    assert a.url().startswith("http://127.0.0.1:9/QwenLM/Qwen2.5-Math/a45202bd")


class _Server:
    """A folder served on 127.0.0.1 (OS-chosen port) in a thread; counts the GET requests it answers."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # keep pytest's output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def _github_layout(shared_dir: Path, out: Path, names: list[str]) -> Path:
    """Copy mirror files to ``<repo>/<commit>/<path>`` under ``out``, as raw.githubusercontent.com serves them."""
    for name in names:
        a = DATA_ASSETS[name]
        target = out / a.repo / a.commit / a.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_dir / a.mirror, target)
    return out


@pytest.fixture
def no_mirror(tmp_path, monkeypatch) -> Path:
    """No mirror, an empty cache under tmp_path: every asset must come over the network."""
    monkeypatch.delenv(DATA_ENV, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("SKILL_DISTILL_CACHE", str(cache))
    return cache


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_download_is_verified_cached_and_reused_without_a_request(tmp_path, shared_dir, no_mirror, monkeypatch):
    names = ["bench/aime25", "tree/skill_mix", "corpus/r1_sample5"]
    with _Server(_github_layout(shared_dir, tmp_path / "served", names)) as server:
        monkeypatch.setenv(URL_ENV, server.url)
        path = Path(resolve("asset:bench/aime25"))
        a = DATA_ASSETS["bench/aime25"]
        assert path == no_mirror / "data" / a.mirror
        assert path.read_bytes() == (shared_dir / a.mirror).read_bytes()
        assert server.requests == [f"/{a.repo}/{a.commit}/{a.path}"]
        # the second call and every loader reuse the cached copy: no new request
        assert resolve("asset:bench/aime25") == str(path)
        assert len(load_benchmark("aime25").problems) == 30
        assert len(server.requests) == 1
        # trees and corpora go through the same resolver
        assert SkillTree.load("asset:tree/skill_mix").topics()
        from skill_distill.corpus import CorpusFields, load_corpus

        rows = load_corpus("asset:corpus/r1_sample5", CorpusFields(id=None, trace="message_content"))
        assert len(rows) == 5 and len(server.requests) == 3
    assert _files(no_mirror) == sorted(no_mirror / "data" / DATA_ASSETS[n].mirror for n in names)  # no temporary left


def test_a_damaged_cache_file_is_fetched_again(tmp_path, shared_dir, no_mirror, monkeypatch):
    with _Server(_github_layout(shared_dir, tmp_path / "served", ["bench/amc23"])) as server:
        monkeypatch.setenv(URL_ENV, server.url)
        path = Path(resolve("asset:bench/amc23"))
        path.write_bytes(path.read_bytes()[:-10])
        fetched = Path(resolve("asset:bench/amc23")).read_bytes()
        assert fetched == (shared_dir / DATA_ASSETS["bench/amc23"].mirror).read_bytes()
        assert len(server.requests) == 2


def test_an_unwritable_cache_is_one_line(tmp_path, shared_dir, no_mirror, monkeypatch):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("SKILL_DISTILL_CACHE", str(tmp_path / "not-a-folder"))
    with _Server(_github_layout(shared_dir, tmp_path / "served", ["bench/amc23"])) as server:
        monkeypatch.setenv(URL_ENV, server.url)
        with pytest.raises(DataError, match=r"^asset:bench/amc23: cannot write the cache file .*not-a-folder/data/"
                                            r"data/benchmarks/amc23/test\.jsonl .*; set SKILL_DISTILL_CACHE"):
            resolve("asset:bench/amc23")


def test_checksum_mismatch_is_one_line_and_leaves_nothing_in_the_cache(tmp_path, shared_dir, no_mirror, monkeypatch):
    served = _github_layout(shared_dir, tmp_path / "served", ["bench/amc23", "bench/aime24"])
    a = DATA_ASSETS["bench/amc23"]
    tampered = served / a.repo / a.commit / a.path
    data = bytearray(tampered.read_bytes())
    data[100] ^= 1  # same size, other content
    tampered.write_bytes(bytes(data))
    b = DATA_ASSETS["bench/aime24"]
    longer = served / b.repo / b.commit / b.path
    longer.write_bytes(longer.read_bytes() + b"\n{}\n")
    with _Server(served) as server:
        monkeypatch.setenv(URL_ENV, server.url)
        with pytest.raises(DataError) as e:
            resolve("asset:bench/amc23")
        message = str(e.value)
        assert "\n" not in message and message.startswith("asset:bench/amc23: ")
        assert f"{server.url}/{a.repo}/{a.commit}/{a.path}" in message and "checksum" in message
        assert "nothing was cached" in message and DATA_ENV in message
        with pytest.raises(DataError, match=r"asset:bench/aime24: .* checksum \(got more than 156944 bytes"):
            load_benchmark("aime24")
    assert _files(no_mirror) == []


def test_missing_file_on_the_server_is_one_line(tmp_path, no_mirror, monkeypatch):
    (tmp_path / "served").mkdir()
    with _Server(tmp_path / "served") as server:
        monkeypatch.setenv(URL_ENV, server.url)
        with pytest.raises(DataError, match=r"^asset:tree/skill_mix: download of http://127\.0\.0\.1:\d+/orange0629/"
                                            r"skill-data-selection/258d2f8.*/skill_mix\.json failed \(HTTP 404\); "
                                            r"check the network, or set SKILL_DISTILL_DATA"):
            SkillTree.load("asset:tree/skill_mix")
    assert _files(no_mirror) == []


@pytest.mark.timeout(60)  # the bound: connection retries and timeouts are finite
def test_unreachable_source_is_one_line(no_mirror, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(URL_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(DataError) as e:
        resolve("asset:bench/math500")
    message = str(e.value)
    assert "\n" not in message and message.startswith("asset:bench/math500: download of http://127.0.0.1:")
    assert "ConnectError" in message and f"set {DATA_ENV} to a mirror folder holding data/benchmarks/math500" in message
    assert _files(no_mirror) == []


def test_mirror_missing_file_or_wrong_file_is_one_line(tmp_path, shared_dir, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "skill_trees").mkdir(parents=True)
    shutil.copyfile(shared_dir / "skill_trees" / "skill_mix.json", mirror / "skill_trees" / "skill_mix.json")
    monkeypatch.setenv(DATA_ENV, str(mirror))
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9")  # never used: a mirror is never bypassed
    assert resolve("asset:tree/skill_mix") == str(mirror / "skill_trees" / "skill_mix.json")
    with pytest.raises(DataError) as e:
        load_benchmark("olympiadbench")
    message = str(e.value)
    assert "\n" not in message and message.startswith("asset:bench/olympiadbench: ")
    assert str(mirror / "data/benchmarks/olympiadbench/test.jsonl") in message and "missing from the mirror" in message
    assert DATA_ASSETS["bench/olympiadbench"].url(assets.DEFAULT_URL) in message
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"^asset:tree/skill_mix: SKILL_DISTILL_DATA=.*nowhere is not a folder; "):
        resolve("asset:tree/skill_mix")
    monkeypatch.setenv(DATA_ENV, str(mirror))
    (mirror / "skill_trees" / "skill_mix.json").write_text("{}")
    with pytest.raises(DataError, match=r"^asset:tree/skill_mix: .*skill_mix\.json \(mirror SKILL_DISTILL_DATA\) does "
                                        r"not match its pinned sha256 5315c80092a0"):
        SkillTree.load("asset:tree/skill_mix")


def test_unknown_asset_is_one_line():
    with pytest.raises(DataError, match=r"unknown data asset 'asset:bench/aime2024'; known: asset:tree/skill_mix, "):
        assets.data_file("bench/aime2024")
    with pytest.raises(DataError, match=r"unknown asset 'asset:bench/aime2024'; known: .*asset:bench/aime24"):
        resolve("asset:bench/aime2024")


def test_every_asset_name_in_configs_scripts_and_benchmarks_is_registered():
    repo = Path(__file__).resolve().parents[1]
    known = {f"asset:{n}" for n in [*assets.ASSETS, *DATA_ASSETS]}
    used = set()
    for folder in ("configs", "scripts", "benchmarks", "experiments"):
        for path in (repo / folder).rglob("*"):
            if path.suffix in {".yaml", ".py", ".sh"}:
                # a name, not an f-string's prefix (asset:bench/{name})
                used |= set(re.findall(r"asset:[\w-]+(?:/[\w-]+)?(?![\w/{-])", path.read_text()))
    assert "asset:tree/skill_mix" in used and used <= known, sorted(used - known)


def test_the_shipped_r1_sample_pool_config_reads_its_asset(tmp_path, shared_dir, monkeypatch):
    import yaml

    from skill_distill.__main__ import main

    repo = Path(__file__).resolve().parents[1]
    config = repo / "configs" / "pipeline" / "pool_r1_sample.yaml"
    assert yaml.safe_load(config.read_text())["source"]["corpus"] == "asset:corpus/r1_sample5"
    monkeypatch.chdir(tmp_path)
    main(["pool", "--config", str(config), f"--output_dir={tmp_path / 'pool'}"])
    pool = [line for line in (tmp_path / "pool" / "pool.jsonl").read_text().splitlines() if line]
    held = [line for line in (tmp_path / "pool" / "heldout.jsonl").read_text().splitlines() if line]
    assert len(pool) + len(held) <= 5 and len(held) == 1 and "<think>" in pool[0]

