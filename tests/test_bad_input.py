"""User-caused errors of the training path: one clear line naming the file, row, field or option, and the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import train
from lightning_modules.causal_lm import CausalLMModule, pick_attn_implementation
from skill_distill.corpus import CorpusFields, load_corpus
from skill_distill.io import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def fit_args(corpus: Path, tiny: Path, tok: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), f"--model.model={tiny}",
            f"--data.tokenizer={tok}", f"--data.corpus={corpus}", "--data.val_corpus=null",
            "--data.selection.strategy=all", "--data.skill_format.mode=off", "--data.profile=null",
            "--data.tree=null", "--data.attribution=null", "--trainer.max_steps=1", "--trainer.callbacks=[]", *extra]


def test_missing_corpus_file(tmp_path):
    with pytest.raises(DataError, match=r"corpus file not found: .*nope\.jsonl"):
        load_corpus(tmp_path / "nope.jsonl")


def test_malformed_jsonl_row_names_file_and_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "a", "problem": "1+1", "trace": "t", "answer": "2"}\n{"id": "b", "problem": \n')
    with pytest.raises(DataError, match=r"c\.jsonl:2: malformed JSON"):
        load_corpus(p)


def test_missing_field_names_row_and_mapping(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "a", "problem": "1+1", "trace": "t"}\n{"id": "b", "question": "2+2", "trace": "t"}\n')
    with pytest.raises(DataError, match=r"row 2: missing field 'problem' \(problem\); set the corpus field mapping"):
        load_corpus(p)
    with pytest.raises(DataError, match=r"row 1: missing field 'solution' \(trace\)"):
        load_corpus(p, CorpusFields(trace="solution"))


def test_duplicate_ids_and_empty_corpus(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "a", "problem": "x", "trace": "t"}\n{"id": "a", "problem": "y", "trace": "t"}\n')
    with pytest.raises(DataError, match=r"row 2: duplicate id 'a' \(first at row 1\)"):
        load_corpus(p)
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match="the corpus is empty"):
        load_corpus(tmp_path / "e.jsonl")


def test_attention_implementation_choices():
    assert pick_attn_implementation("sdpa") == "sdpa"
    with pytest.raises(ConfigError, match="flash_attention_2 needs CUDA"):
        CausalLMModule(model="x", attn_implementation="flash_attention_2")
    with pytest.raises(ConfigError,
                       match="'flash' is unknown; use auto, flash_attention_2, sdpa_packed, sdpa or eager"):
        pick_attn_implementation("flash")


@pytest.mark.slow
def test_step_not_divisible_by_ranks_and_accumulation(tmp_path, shared_dir, tiny_qwen3_dir, qwen_tokenizer_dir,
                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "problem": "1+1",
                                          "trace": "<think>2</think> \\boxed{2}"}) + "\n"
                              for i in range(16)))
    with pytest.raises(ConfigError, match=r"examples_per_step=8 must be divisible by .* accumulate_grad_batches \(3\)"):
        train.main(fit_args(corpus, tiny_qwen3_dir, qwen_tokenizer_dir, "--trainer.accumulate_grad_batches=3"))


@pytest.mark.slow
def test_cli_prints_one_line(tmp_path, tiny_qwen3_dir, qwen_tokenizer_dir):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "problem": "1+1", "trace": "t"}\nnot json\n')
    # run from tmp_path: the quickstart config's relative outputs (loggers, checkpoints) land there, not in the tree
    proc = subprocess.run([sys.executable, str(REPO / "train.py"),
                           *fit_args(corpus, tiny_qwen3_dir, qwen_tokenizer_dir),
                           f"--trainer.default_root_dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"error: {corpus}:2: malformed JSON (Expecting value); fix or delete this line"
    assert "Traceback" not in proc.stderr
