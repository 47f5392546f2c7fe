"""`python train.py fit` on a shortened quickstart: a checkpoint and an HF export that reloads with identical logits.
The quickstart's vLLM evaluation is left out (not what this checks, and minutes on a loaded CPU; it is covered by
tests/test_skill_eval_callback.py on the same config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

import train

REPO = Path(__file__).resolve().parents[1]


def write_corpus(shared_dir: Path, path: Path, n: int = 24) -> Path:
    rows = [json.loads(line) for line in (shared_dir / "data/benchmarks/math500/test.jsonl").open()][:n]
    with path.open("w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"id": f"m{i}", "problem": r["problem"], "answer": r["answer"],
                                "trace": f"<think>\n{r['solution'][:300]}\n</think>\n\n"
                                         f"\\boxed{{{r['answer']}}}"}) + "\n")
    return path


@pytest.mark.slow
def test_fit_writes_checkpoint_and_export_with_identical_logits(tmp_path, monkeypatch, shared_dir, tiny_qwen3_dir,
                                                               qwen_tokenizer_dir):
    monkeypatch.chdir(tmp_path)
    corpus = write_corpus(shared_dir, tmp_path / "corpus.jsonl")
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"]
                                   if not c["class_path"].endswith("SkillEvalCallback")]
    (tmp_path / "quickstart.yaml").write_text(yaml.safe_dump(cfg))
    cli = train.main([
        "fit", "--config", str(tmp_path / "quickstart.yaml"),
        f"--model.model={tiny_qwen3_dir}", f"--data.tokenizer={qwen_tokenizer_dir}", f"--data.corpus={corpus}",
        f"--data.val_corpus={corpus}", "--data.selection.strategy=all", "--data.skill_format.mode=off",
        "--data.profile=null", "--data.tree=null", "--data.attribution=null",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.precision=32-true",
    ])
    run = tmp_path / "runs" / "quickstart"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = (run / "logs" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "train/grad_norm" in metrics and "train/tokens_per_s" in metrics
    assert cli.trainer.global_step == 2

    export = run / "hf_export" / "final"
    reloaded = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    assert reloaded.config.use_cache is True and reloaded.config.tie_word_embeddings
    exported = __import__("safetensors.torch", fromlist=["x"]).load_file(export / "model.safetensors")
    assert "lm_head.weight" not in exported
    trained = cli.model.model.eval()
    with torch.no_grad():  # the export was written in bf16 (quickstart's HFExportCallback dtype)
        for p in trained.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ids = torch.tensor([[151644, 872, 198, 3838, 374, 220, 17, 10, 17, 30, 151645]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, trained(ids).logits, rtol=0, atol=0)
    # the checkpoint holds the same weights
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    w = state["model.model.layers.0.self_attn.q_proj.weight"]
    torch.testing.assert_close(w.to(torch.bfloat16).float(), reloaded.model.layers[0].self_attn.q_proj.weight,
                               rtol=0, atol=0)
