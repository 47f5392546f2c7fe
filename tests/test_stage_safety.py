"""Pipeline stages never lose data or leave anything behind: bad bytes in every input kind are one line naming the
file and byte offset (exit 2 at the CLI); resumable JSONL outputs tolerate only a torn last line; a stage killed
with ``kill -9`` leaves no child process alive."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skill_distill.corpus import load_corpus
from skill_distill.eval_sets import BenchmarkSpec
from skill_distill.evaluation import load_benchmarks
from skill_distill.generation.factory import VLLMConfig
from skill_distill.grading import GradingConfig
from skill_distill.io import DataError, JsonlAppender, read_jsonl
from skill_distill.profile import load_profile, run_profile
from skill_distill.project import process_tree
from skill_distill.selection import read_mean_correctness, read_profile_nodes
from skill_distill.skill_stats import load_attribution
from skill_distill.skill_tree import SkillTree

REPO = Path(__file__).resolve().parents[1]
TREE = {"name": "Math", "children": [
    {"name": "Arithmetic", "children": [{"name": "addition"}, {"name": "multiplication"}]}]}
BAD = b"\xff\xfe"  # never valid UTF-8


def _row(i: int) -> dict:
    return {"id": f"p{i}", "problem": f"What is {i} + {i}?", "trace": f"<think>{i}+{i}</think> \\boxed{{{2 * i}}}",
            "answer": str(2 * i), "pass_rate": None}


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _with_bad_bytes_at_line(good: bytes, line: int) -> tuple[bytes, int]:
    """``good`` with non-UTF-8 bytes inside its 1-based ``line``; returns the bytes and the bad bytes' offset."""
    lines = good.splitlines(keepends=True)
    offset = sum(len(x) for x in lines[: line - 1]) + min(10, len(lines[line - 1]) - 1)  # before its newline
    return good[:offset] + BAD + good[offset:], offset


def _bad_bytes_message(path: Path, line: int, offset: int) -> str:
    return rf"{path}:{line}: bytes that are not UTF-8 at byte offset {offset} "


@pytest.fixture
def tree_file(tmp_path) -> Path:
    p = tmp_path / "tree.json"
    p.write_text(json.dumps(TREE))
    return p


# ---- bad bytes, one input kind at a time ----------------------------------------------------------------
def test_corpus_jsonl_json_and_parquet(tmp_path):
    data, offset = _with_bad_bytes_at_line(_jsonl_bytes([_row(i) for i in range(4)]), 3)
    (tmp_path / "c.jsonl").write_bytes(data)
    with pytest.raises(DataError, match=_bad_bytes_message(tmp_path / "c.jsonl", 3, offset)):
        load_corpus(tmp_path / "c.jsonl")

    text = json.dumps([_row(0), _row(1)], indent=1).encode()
    data, offset = _with_bad_bytes_at_line(text, 4)
    (tmp_path / "c.json").write_bytes(data)
    with pytest.raises(DataError, match=_bad_bytes_message(tmp_path / "c.json", 4, offset)):
        load_corpus(tmp_path / "c.json")

    # a Parquet string column holding bytes that are not UTF-8, and a file that is not Parquet at all
    problems = pa.array([b"1+1", b"2\xff+2"], pa.binary()).cast(pa.string(), safe=False)
    table = pa.table({"id": ["a", "b"], "problem": problems,
                      "trace": ["<think>2</think>", "<think>4</think>"]})
    pq.write_table(table, tmp_path / "c.parquet")
    with pytest.raises(DataError, match=rf"{tmp_path / 'c.parquet'}: column 'problem' holds bytes that are not "
                                        r"UTF-8 in rows 0-1 \(.*Invalid UTF8 sequence at string index 1"):
        load_corpus(tmp_path / "c.parquet")
    (tmp_path / "d.parquet").write_bytes(BAD + b"not parquet")
    with pytest.raises(DataError, match=rf"{tmp_path / 'd.parquet'}: not a readable Parquet file"):
        load_corpus(tmp_path / "d.parquet")


def test_skill_tree_and_display_names(tmp_path, tree_file):
    data, offset = _with_bad_bytes_at_line(json.dumps(TREE, indent=1).encode(), 2)
    (tmp_path / "bad_tree.json").write_bytes(data)
    with pytest.raises(DataError, match=_bad_bytes_message(tmp_path / "bad_tree.json", 2, offset)):
        SkillTree.load(tmp_path / "bad_tree.json")
    (tmp_path / "names.json").write_bytes(b'{"addition": "add' + BAD + b'"}')
    with pytest.raises(DataError, match=_bad_bytes_message(tmp_path / "names.json", 1, 17)):
        SkillTree.load(tree_file, display_names=tmp_path / "names.json")


def test_attribution_profile_and_verdicts(tmp_path, tree_file):
    tree = SkillTree.load(tree_file)
    rows = [{"id": f"p{i}", "chains": [["Arithmetic", "addition"]]} for i in range(3)]
    data, offset = _with_bad_bytes_at_line(_jsonl_bytes(rows), 2)
    (tmp_path / "attr.jsonl").write_bytes(data)
    with pytest.raises(DataError, match=_bad_bytes_message(tmp_path / "attr.jsonl", 2, offset)):
        load_attribution(tmp_path / "attr.jsonl", tree)

    profile = {"nodes": [{"chain": "", "judged": 2, "accuracy": 0.5},
                         {"chain": "Arithmetic->addition", "judged": 2, "accuracy": 0.5}]}
    data, offset = _with_bad_bytes_at_line(json.dumps(profile, indent=1).encode(), 3)
    (tmp_path / "profile.json").write_bytes(data)
    for read in (load_profile, read_profile_nodes):
        with pytest.raises(DataError, match=_bad_bytes_message(tmp_path / "profile.json", 3, offset)):
            read(tmp_path / "profile.json", tree)

    verdicts = [{"id": f"p{i}", "sample": 0, "correct": True} for i in range(3)]
    data, offset = _with_bad_bytes_at_line(_jsonl_bytes(verdicts), 2)
    (tmp_path / "verdicts.jsonl").write_bytes(data)
    with pytest.raises(DataError, match=_bad_bytes_message(tmp_path / "verdicts.jsonl", 2, offset)):
        read_mean_correctness(tmp_path / "verdicts.jsonl")


def test_benchmark_files(tmp_path, shared_dir):
    real = (shared_dir / "data" / "benchmarks" / "aime24" / "test.jsonl").read_bytes()
    rows = real.splitlines(keepends=True)[:3]
    data, offset = _with_bad_bytes_at_line(b"".join(rows), 2)
    (tmp_path / "aime.jsonl").write_bytes(data)
    with pytest.raises(DataError, match=_bad_bytes_message(tmp_path / "aime.jsonl", 2, offset)):
        load_benchmarks([BenchmarkSpec(name="aime24", path=str(tmp_path / "aime.jsonl"))])

    as_json = json.dumps([json.loads(r) for r in rows], indent=1).encode()
    data, offset = _with_bad_bytes_at_line(as_json, 3)
    (tmp_path / "aime.json").write_bytes(data)
    with pytest.raises(DataError, match=_bad_bytes_message(tmp_path / "aime.json", 3, offset)):
        load_benchmarks([BenchmarkSpec(name="aime24", path=str(tmp_path / "aime.json"))])

    (tmp_path / "aime.parquet").write_bytes(BAD * 8)
    with pytest.raises(DataError, match=rf"{tmp_path / 'aime.parquet'}: not a readable Parquet file"):
        load_benchmarks([BenchmarkSpec(name="aime24", path=str(tmp_path / "aime.parquet"))])


def _stage(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skill_distill", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_pool_and_profile_stages_print_one_line_and_exit_2(tmp_path, tree_file):
    data, offset = _with_bad_bytes_at_line(_jsonl_bytes([_row(i) for i in range(5)]), 4)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(data)
    proc = _stage("pool", f"--source.corpus={corpus}", f"--output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {corpus}:4: bytes that are not UTF-8 at byte offset {offset} (invalid start byte); "
        "fix or delete this line"]
    assert not (tmp_path / "out").exists()

    # the same stage on good bytes ends with a summary of what it wrote where (plain lines: stdout is a pipe)
    corpus.write_bytes(_jsonl_bytes([_row(i) for i in range(5)]))
    proc = _stage("pool", f"--source.corpus={corpus}", f"--output_dir={tmp_path / 'out'}", "--draw.heldout=2",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert proc.stdout.splitlines() == [
        "[pool] 5 source rows, 5 pass the filters (dropped: none), 0 duplicate traces of a problem merged",
        f"[pool] pool: 3 examples -> {out / 'pool.jsonl'}",
        f"[pool] held-out: 2 examples -> {out / 'heldout.jsonl'}",
        f"[pool] decontamination: 0 problems overlap an evaluation set -> {out / 'decontamination_hits.jsonl'}",
        f"[pool] stats: {out / 'pool_stats.json'}"]
    assert len(read_jsonl(tmp_path / "out" / "pool.jsonl")) == 3
    corpus.write_bytes(data)

    # the profile stage's pool and tree
    (tmp_path / "attr.jsonl").write_text("")
    bad_tree = tmp_path / "bad_tree.json"
    bad_tree.write_bytes(b'{"name": "Ma' + BAD + b'th"}')
    proc = _stage("profile", f"--pool={corpus}", f"--tree={bad_tree}", f"--attribution={tmp_path / 'attr.jsonl'}",
                  f"--output_dir={tmp_path / 'prof'}", "--backend.model=unused", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad_tree}:1: bytes that are not UTF-8 at byte offset 12 (invalid start byte); "
        "re-encode the file as UTF-8"]


@pytest.mark.slow
def test_a_stage_argument_mistake_is_one_line_with_did_you_mean(tmp_path):
    """A misspelt key on the command line or in a config, and a YAML syntax error: one `error:` line (no usage
    block first, which was 13-24 lines), exit 2, through the parser train.py uses (skill_distill.cli_errors)."""
    typo = tmp_path / "typo.yaml"
    typo.write_text("source:\n  corpsu: x.jsonl\n")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("source:\n  corpus: [x\n")
    help_ = " (every option: python -m skill_distill pool --help)"
    cases = [(["--source.corpsu=x.jsonl"], "error: unrecognized arguments: --source.corpsu=x.jsonl; did you mean "
                                           "--source.corpus?" + help_),
             (["--config", str(typo)], "error: Subcommand 'pool' does not accept option 'source.corpsu'; did you "
                                       "mean source.corpus?" + help_),
             (["--config", str(bad_yaml)], f"error: {bad_yaml}:3:1: YAML syntax error: expected ',' or ']', but got "
                                           "'<stream end>'" + help_)]
    for args, expected in cases:
        proc = _stage("pool", *args, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.splitlines() == [expected], (args, proc.stderr)


def test_a_stage_help_shows_the_settings_descriptions(capsys):
    """The settings' attribute docstrings are read for help (``cli_errors.shows_help``), not for other parses."""
    from skill_distill.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["pool", "--help"])
    assert stop.value.code == 0
    assert "Drop rows whose prompt (the chat-templated user turn" in " ".join(capsys.readouterr().out.split())


# ---- resumable JSONL outputs --------------------------------------------------------------------------
def test_appender_drops_only_a_torn_last_line(tmp_path):
    p = tmp_path / "out.jsonl"
    good = _jsonl_bytes([{"id": str(i)} for i in range(3)])
    p.write_bytes(good + b'{"id": "3", "te')
    with JsonlAppender(p) as out:
        assert out.done == {"0", "1", "2"}
        out.append([{"id": "3"}])
    assert read_jsonl(p) == [{"id": str(i)} for i in range(4)]

    # a torn multi-byte character in the last line is a torn line too
    p.write_bytes(good + '{"id": "é'.encode()[:-1])
    with JsonlAppender(p) as out:
        assert len(out.rows) == 3
    assert p.read_bytes() == good

    # a complete last row that lost only its newline is kept, and the next append starts a new line
    p.write_bytes(good.rstrip(b"\n"))
    with JsonlAppender(p) as out:
        out.append([{"id": "3"}])
    assert read_jsonl(p) == [{"id": str(i)} for i in range(4)]


@pytest.mark.parametrize("damage", [b'{"id": "x", "sam\n', BAD + b"\n"], ids=["bad-json", "bad-bytes"])
def test_appender_refuses_a_complete_bad_last_line(tmp_path, damage):
    """A torn append never ends with its newline: a newline-terminated bad last line is bad data, named, not
    silently dropped as if it were torn (issue 28)."""
    p = tmp_path / "out.jsonl"
    before = _jsonl_bytes([{"id": "0"}, {"id": "1"}]) + damage
    p.write_bytes(before)
    with pytest.raises(DataError, match=rf"{p}:3: "):
        JsonlAppender(p)
    assert p.read_bytes() == before


@pytest.mark.parametrize("damage", [b'{"id": "x", "sam\n', BAD + b"\n"], ids=["bad-json", "bad-bytes"])
def test_appender_refuses_a_bad_middle_line_and_keeps_the_file(tmp_path, damage):
    p = tmp_path / "out.jsonl"
    before = _jsonl_bytes([{"id": "0"}, {"id": "1"}]) + damage + _jsonl_bytes([{"id": "2"}, {"id": "3"}])
    p.write_bytes(before)
    with pytest.raises(DataError, match=rf"{p}:3: "):
        JsonlAppender(p)
    assert p.read_bytes() == before


def test_profile_rerun_with_a_corrupted_middle_verdict_stops_and_discards_nothing(tmp_path, tree_file):
    """24 complete verdict rows with row 5 damaged: the rerun names the file and line instead of silently
    redoing the 19 valid rows after it (it stops before any engine is built)."""
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(_jsonl_bytes([_row(i) for i in range(30)]))
    (tmp_path / "attr.jsonl").write_text("")
    out = tmp_path / "prof"
    out.mkdir()
    verdicts = [json.dumps({"id": f"p{i}", "sample": 0, "correct": i % 2 == 0, "extracted": str(2 * i),
                            "num_tokens": 5, "truncated": False}) + "\n" for i in range(24)]
    verdicts[4] = verdicts[4][:25] + "\n"
    before = "".join(verdicts).encode()
    (out / "verdicts.jsonl").write_bytes(before)
    backend = VLLMConfig(model=str(tmp_path / "no-model-here"))
    with pytest.raises(DataError, match=rf"{out / 'verdicts.jsonl'}:5: malformed JSON"):
        run_profile(str(pool), str(tree_file), str(tmp_path / "attr.jsonl"), str(out), backend,
                    grading=GradingConfig(workers=0))
    assert (out / "verdicts.jsonl").read_bytes() == before


# ---- kill -9 of a stage ---------------------------------------------------------------------------------
def _wait_for_log(proc, log_path: Path, marker: str, within_s: float, what: str) -> None:
    """Until ``proc``'s log holds ``marker``; fails with the log's tail if ``proc`` exits first."""
    deadline = time.monotonic() + within_s
    while marker not in log_path.read_text():
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def _kill_9_and_wait(proc, children, who: str, within_s: float = 10.0) -> None:
    """kill -9 ``proc``, then give its ``children`` ``within_s`` seconds to die with it; fail naming any alive."""
    names = {c: _cmdline(c)[:60] for c in children}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    gone_after: dict[int, float] = {}
    while len(gone_after) < len(children) and time.monotonic() - t0 < within_s:
        gone_after.update({c: time.monotonic() - t0 for c in children if c not in gone_after and not _alive(c)})
        time.sleep(0.05)
    left = {c: _cmdline(c) for c in children if _alive(c)}
    assert not left, f"still alive {within_s} s after kill -9 of {who}: {left}"
    each = ", ".join(f"{names[c].strip()} {t:.2f} s" for c, t in sorted(gone_after.items(), key=lambda kv: kv[1]))
    print(f"children of {who} gone {time.monotonic() - t0:.2f} s after its kill -9 ({each})")  # shown with -s


def _descendants(pid: int) -> set[int]:
    return set(process_tree(pid)) - {pid}  # the run summary's walk of the process tree


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in {"Z", "X"}  # a zombie has released everything; only the reaper has not called wait yet


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.vllm
@pytest.mark.slow
def test_kill_9_of_the_profile_stage_leaves_no_child_alive(tmp_path, tiny_qwen3_dir, tree_file):
    pool = tmp_path / "pool.jsonl"
    # many 64-token chunks: the first is graded soon after the engine starts, and 59 more are still to generate
    # when the test kills the stage
    pool.write_bytes(_jsonl_bytes([_row(i) for i in range(1200)]))
    (tmp_path / "attr.jsonl").write_text("")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = (tmp_path / "stage.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "skill_distill", "profile", f"--pool={pool}", f"--tree={tree_file}",
                             f"--attribution={tmp_path / 'attr.jsonl'}", f"--output_dir={tmp_path / 'prof'}",
                             "--backend=VLLMConfig", f"--backend.model={tiny_qwen3_dir}",
                             "--backend.max_model_len=1024",
                             "--backend.engine_process=true",  # the engine-core process of GPU runs, guarded
                             "--sampling.max_new_tokens=64", "--sampling.temperature=1.0", "--chunk_size=20",
                             "--grading.workers=2", "--answer_fallback=last_number"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 400
        # generation is running once the first chunk is graded (the next one is then being generated)
        while "[profile] 20/1200 problems" not in (tmp_path / "stage.log").read_text():
            assert proc.poll() is None, (tmp_path / "stage.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the profile stage did not finish a chunk in time"
            time.sleep(0.5)
        children = _descendants(proc.pid)
        names = " | ".join(_cmdline(c) for c in children)
        # vLLM's engine core, two grading workers and multiprocessing's resource tracker
        assert len(children) >= 4, names
        assert any("resource_tracker" in _cmdline(c) for c in children), names
        _kill_9_and_wait(proc, children, "the stage")
        # a readable log: plain progress lines, and none of vLLM's INFO lines ("INFO 12-01 09:30:00 [file.py:1]")
        shown = (tmp_path / "stage.log").read_text()
        assert "[profile] shard 0/1: 1200 problems, 0 already graded, 1200 to go\n" in shown
        assert not re.search(r"INFO \d\d-\d\d \d\d:\d\d:\d\d", shown), shown[:3000]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


_GENERATING_PARENT = """
import sys
from skill_distill.generation.base import SamplingConfig
from skill_distill.generation.factory import VLLMConfig
from skill_distill.generation.child_process import generate_in_subprocess

if __name__ == "__main__":
    cfg = VLLMConfig(model=sys.argv[1], max_model_len=1024, engine_process=True)  # as on GPUs
    generate_in_subprocess(cfg, ["Count to one thousand."] * 64, SamplingConfig(temperature=1.0, max_new_tokens=900))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.vllm
@pytest.mark.slow
def test_kill_9_during_generate_in_subprocess_leaves_no_child_alive(tmp_path, tiny_qwen3_dir):
    """The evaluation inside training: its generation child, vLLM's engine core and worker die with the parent."""
    # INFO on purpose: the engine core's "init engine ... took" line says generation starts now
    env = dict(os.environ, PYTHONPATH=str(REPO), VLLM_LOGGING_LEVEL="INFO")
    log_path = tmp_path / "parent.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-c", _GENERATING_PARENT, str(tiny_qwen3_dir)], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_log(proc, log_path, "init engine (profile, create kv cache, warmup model) took", 300,
                          "the engine did not start in time")
            time.sleep(2)
            children = _descendants(proc.pid)
            names = " | ".join(_cmdline(c) for c in children)
            assert any("EngineCore" in _cmdline(c) for c in children), names
            _kill_9_and_wait(proc, children, "the parent")
        finally:
            if proc.poll() is None:
                proc.kill()
