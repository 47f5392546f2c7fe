"""The loss is normalised by the supervised tokens of the whole optimizer step: the gradient does not depend on
how the step's examples are laid out (packed or padded), split into micro-batches, or spread over ranks; and the
chunked loss that never materialises the logits (the default, ``linear_ce``) gives today's dense loss and gradients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "scripts"))
import launch  # noqa: E402 - importable only after the sys.path.insert above
import one_step_grads  # noqa: E402

SCRIPT = REPO / "tests" / "scripts" / "one_step_grads.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_dir):
    """16 real MATH-500 rows (problem + reference solution as the trace): varied lengths."""
    rows = [json.loads(line) for line in (shared_dir / "data/benchmarks/math500/test.jsonl").open()][:16]
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with path.open("w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"id": f"m{i}", "problem": r["problem"], "trace": r["solution"],
                                "answer": r["answer"]}) + "\n")
    return path


def run_step(tmp_path, corpus, tokenizer_dir, name, **kw) -> tuple[dict, float]:
    """One optimizer step of the script; one process runs in this one (a subprocess would spend most of its time
    importing torch and Lightning), two DDP ranks in a subprocess."""
    out = tmp_path / f"{name}.pt"
    args = ["--corpus", str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(out)]
    for k, v in kw.items():
        args += [f"--{k}", str(v)]
    if kw.get("devices", 1) == 1:
        one_step_grads.main(args)
    else:
        env = dict(os.environ, PYTHONPATH=str(REPO), MASTER_PORT=str(launch.free_port()))  # a port the OS chose
        proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out), json.loads(Path(str(out) + ".json").read_text())["train/loss"]


def assert_same_grads(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.distributed
@pytest.mark.slow
def test_layouts_and_accumulation_and_ranks_give_the_same_gradient(tmp_path, corpus, qwen_tokenizer_dir):
    base, base_loss = run_step(tmp_path, corpus, qwen_tokenizer_dir, "packed_a1", accumulate=1, packing=1)
    padded, padded_loss = run_step(tmp_path, corpus, qwen_tokenizer_dir, "padded_a1", accumulate=1, packing=0)
    accum, accum_loss = run_step(tmp_path, corpus, qwen_tokenizer_dir, "packed_a4", accumulate=4, packing=1)
    ddp, ddp_loss = run_step(tmp_path, corpus, qwen_tokenizer_dir, "ddp2", accumulate=2, packing=1, devices=2)
    # today's loss (fp32 logits of every supervised position), and the chunked one with many small chunks
    dense, dense_loss = run_step(tmp_path, corpus, qwen_tokenizer_dir, "dense_a1", accumulate=1, packing=1,
                                 loss="dense")
    chunks, chunks_loss = run_step(tmp_path, corpus, qwen_tokenizer_dir, "chunk7_a1", accumulate=1, packing=1,
                                   loss="linear_ce", loss_chunk_size=7)
    assert_same_grads(base, padded)  # packed == padded
    assert_same_grads(base, accum)  # 4 micro-batches == one batch of the same tokens
    assert_same_grads(base, ddp)  # 2 ranks x 2 micro-batches == one process
    assert_same_grads(base, dense)  # the chunked loss (auto) == the dense loss, tied embeddings included
    assert_same_grads(dense, chunks)
    assert base_loss == pytest.approx(padded_loss, rel=1e-5)
    assert base_loss == pytest.approx(accum_loss, rel=1e-5)
    assert base_loss == pytest.approx(ddp_loss, rel=1e-5)
    assert base_loss == pytest.approx(dense_loss, rel=1e-5) and dense_loss == pytest.approx(chunks_loss, rel=1e-5)
    assert 5 < base_loss < 20  # a random tiny model over a 152k vocabulary: about ln(151936) = 11.9
