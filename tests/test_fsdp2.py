"""FSDP2 under Lightning's ModelParallelStrategy (gloo on CPU, the same code as NCCL on GPUs):

- memory-light sharded loading (meta device -> shard -> per-rank slices of the safetensors) gives the logits and
  gradients of plain transformers, keeps tied embeddings tied and recomputes RoPE buffers;
- resumption from distributed (per-rank shard) and full checkpoints equals the uninterrupted run, packed batches;
- a crash in the middle of a save (rank 0 SIGKILLed after writing its shard) leaves the previous checkpoint as the
  resume point; a 2-rank checkpoint resumes on 1 rank;
- a 2-"node" simulation (one process per node, NODE_RANK 0/1) where only node 1 receives SIGTERM: both ranks stop
  after the same step, save together, exit 143, and the resumed run equals the uninterrupted one;
- the exporter consolidates a sharded checkpoint into an HF directory with identical logits;
- the chunked loss (``linear_ce``) computed inside the root's forward on 2 ranks gives the loss and gradients of
  today's dense loss on one unsharded model.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
import launch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # every test here runs 2-rank FSDP2 jobs

STEPS = 8  # 16 examples, 4 per step, 2 epochs
PROMPT = torch.tensor([[151644, 872, 198, 3838, 374, 220, 17, 10, 17, 30, 151645, 198, 151644, 77091, 198]])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_dir, qwen_tokenizer_dir):
    root = tmp_path_factory.mktemp("fsdp2")
    common = {"corpus": launch.write_short_corpus(shared_dir, root / "corpus.jsonl"), "tokenizer": qwen_tokenizer_dir,
              "model": launch.tiny_model_dir(), "strategy": "fsdp2"}
    return root, common


@pytest.fixture(scope="module")
def reference(setup) -> Path:
    """The uninterrupted FSDP2 run: 1 node x 2 ranks, distributed checkpoints, packed batches."""
    root, common = setup
    ref = root / "ref"
    launch.run("resume_run.py", log=root / "ref.log", run_dir=ref, devices=2, logits_out=ref / "logits.pt", **common)
    return ref


def test_sharded_loading_matches_plain_transformers(setup):
    root, common = setup
    out = root / "sharded_load.json"
    port = launch.free_port()
    procs = [launch.start("sharded_load.py", port=port, log=root / f"sl{r}.log",
                          env_extra={"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2"},
                          model=common["model"], out=out) for r in (0, 1)]
    for r, p in enumerate(procs):
        launch.finish(p, root / f"sl{r}.log")
    res = json.loads(out.read_text())
    assert res["params_are_dtensors"] and res["local_embedding_rows"] == res["vocab_size"] // 2  # each rank: half
    assert res["tied"] and res["grad_names"]
    assert res["inv_freq_diff"] == 0.0
    assert res["logits_diff_fp32"] <= 1e-5 * max(res["logits_scale"], 1.0)
    assert res["grad_diff_fp32"] <= 1e-6  # with per-layer activation checkpointing on the sharded side
    assert res["logits_diff_bf16"] <= 2e-2 * max(res["bf16_scale"], 1.0)  # bf16 compute vs the model cast to bf16


@pytest.fixture(scope="module")
def crashed_mid_save(setup) -> Path:
    """A run whose rank 0 is SIGKILLed while saving the step-6 checkpoint (after writing its own shard)."""
    root, common = setup
    run = root / "crash"
    log = root / "crash_a.log"
    proc = launch.start("resume_run.py", log=log, new_session=True, run_dir=run, devices=2, kill_in_save_at_step=6,
                        **common)
    try:
        assert launch.finish(proc, log, expect=None) == -9, launch.tail(log)
    finally:
        launch.kill_group(proc)  # rank 1 is left waiting in a collective
    return run


def test_crash_mid_save_resumes_from_the_previous_checkpoint(setup, reference, crashed_mid_save):
    root, common = setup
    ckpts = crashed_mid_save / "checkpoints"
    partial = ckpts / ".tmp-step=0000006.ckpt"
    assert (partial / "__0_0.distcp").is_file() and not (partial / ".metadata").exists()
    assert (ckpts / "last.ckpt").resolve().name == "step=0000004.ckpt"
    run = root / "crash_resumed_2ranks"
    shutil.copytree(crashed_mid_save, run, symlinks=True)
    launch.run("resume_run.py", log=root / "crash_b.log", run_dir=run, devices=2, resume=True,
               logits_out=run / "logits.pt", **common)
    launch.assert_same_training(reference, run, ranks=2, steps=STEPS)
    for rank in (0, 1):
        assert launch.redone_steps_match(run, rank) == [5, 6]
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())  # cleaned at start
    torch.testing.assert_close(torch.load(run / "logits.pt"), torch.load(reference / "logits.pt"), rtol=0, atol=0)


def test_two_rank_checkpoint_resumes_on_one_rank(setup, reference, crashed_mid_save):
    root, common = setup
    run = root / "crash_resumed_1rank"
    shutil.copytree(crashed_mid_save, run, symlinks=True)
    launch.run("resume_run.py", log=root / "one_rank.log", run_dir=run, devices=1, resume=True,
               logits_out=run / "logits.pt", **common)
    ref0, ref1, mine = (launch.trace_by_step(reference, 0), launch.trace_by_step(reference, 1),
                        launch.trace_by_step(run, 0))
    assert sorted(mine) == list(range(1, STEPS + 1))
    for step in range(5, STEPS + 1):  # after resuming: one rank takes both halves of each step (order may differ)
        assert sorted(mine[step]["ids"]) == sorted(ref0[step]["ids"] + ref1[step]["ids"])
        assert mine[step]["loss"] == pytest.approx(ref0[step]["loss"], rel=1e-6)
        assert mine[step]["lr"] == ref0[step]["lr"]
    torch.testing.assert_close(torch.load(run / "logits.pt"), torch.load(reference / "logits.pt"), rtol=1e-5, atol=1e-5)


def test_full_checkpoint_resume_equals_uninterrupted(setup, reference):
    root, common = setup
    run = root / "full"
    full = {"devices": 2, "ckpt_format": "full", **common}
    launch.run("resume_run.py", log=root / "full_a.log", run_dir=run, crash_after_step=3, expect=17, **full)
    last = run / "checkpoints" / "last.ckpt"
    assert last.resolve().name == "step=0000002.ckpt" and last.resolve().is_file()  # one consolidated file
    launch.run("resume_run.py", log=root / "full_b.log", run_dir=run, resume=True, **full)
    launch.assert_same_training(reference, run, ranks=2, steps=STEPS)
    assert launch.redone_steps_match(run, 0) == [3]


def test_two_node_sigterm_on_one_node_saves_together_and_resumes(setup, reference):
    root, common = setup
    run = root / "two_node"
    nodes = {"devices": 1, "num_nodes": 2, **common}
    codes = launch.run_nodes("resume_run.py", 2, [root / "node0_a.log", root / "node1_a.log"], expect=None,
                             run_dir=run, sigterm_at_step=3, sigterm_rank=1, **nodes)
    assert codes == [143, 143], [launch.tail(root / f"node{n}_a.log") for n in (0, 1)]
    assert (run / "checkpoints" / "last.ckpt").resolve().name == "step=0000003.ckpt"
    for rank in (0, 1):  # both ranks stopped right after step 3
        assert max(launch.trace_by_step(run, rank)) == 3
    launch.run_nodes("resume_run.py", 2, [root / "node0_b.log", root / "node1_b.log"], run_dir=run, resume=True,
                     **nodes)
    launch.assert_same_training(reference, run, ranks=2, steps=STEPS)
    assert launch.redone_steps_match(run, 0) == []  # the stop saved exactly where it stopped


def test_export_of_sharded_checkpoint_reloads_with_identical_logits(setup, reference, tmp_path, qwen_tokenizer_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from lightning_modules.checkpoint_export import run_export

    out = run_export(str(reference / "checkpoints" / "last.ckpt"), str(tmp_path / "hf"),
                     tokenizer=str(qwen_tokenizer_dir))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.use_cache and model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.weight" not in load_file(Path(out) / "model.safetensors")  # tied: written once
    with torch.no_grad():
        logits = model(PROMPT).logits
    torch.testing.assert_close(logits, torch.load(reference / "logits.pt"), rtol=0, atol=0)
    # bf16 for serving: the same weights rounded
    out16 = run_export(str(reference / "checkpoints" / "last.ckpt"), str(tmp_path / "hf16"), dtype="bfloat16")
    w16 = load_file(Path(out16) / "model.safetensors")["model.layers.0.mlp.up_proj.weight"]
    assert w16.dtype == torch.bfloat16
    torch.testing.assert_close(w16.float(), model.model.layers[0].mlp.up_proj.weight.to(torch.bfloat16).float())


def test_chunked_loss_inside_the_fsdp2_root_matches_the_dense_loss(setup, tmp_path, qwen_tokenizer):
    from datamodules.batching import SFTCollator, encode_example

    root, common = setup
    rows = launch.read_rows(Path(common["corpus"]))[:8]
    examples = [encode_example(qwen_tokenizer, r["id"], r["problem"], r["trace"], max_length=96) for r in rows]
    collate = SFTCollator(qwen_tokenizer.pad_token_id, packing=True)
    halves = [collate([(e, None) for e in examples[:4]]), collate([(e, None) for e in examples[4:]])]
    torch.save(halves, tmp_path / "halves.pt")
    out = tmp_path / "fsdp2_loss.json"
    port = launch.free_port()
    procs = [launch.start("fsdp2_loss.py", port=port, log=tmp_path / f"loss{r}.log",
                          env_extra={"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2"},
                          model=common["model"], batch=tmp_path / "halves.pt", out=out) for r in (0, 1)]
    for r, p in enumerate(procs):
        launch.finish(p, tmp_path / f"loss{r}.log")
    res = json.loads(out.read_text())
    assert res["world_size"] == 2 and res["is_fsdp"] and res["registered"] and res["tied"]
    assert "model.embed_tokens.weight" in res["grad_names"]
    assert res["tokens"] == res["step_tokens"] > 64  # more supervised positions than one chunk (16)
    assert res["loss"] == pytest.approx(res["ref_loss"], rel=1e-5)
    assert res["grad_diff"] <= 1e-5 * max(res["grad_scale"], 1.0)
