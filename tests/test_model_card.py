"""Every HF export carries a model card: a quickstart-like run (tiny Qwen3, skill selection and format, a
decontaminated pool, a per-skill held-out evaluation with HF generate), exported by the callback and the stage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

import train
from lightning_modules.checkpoint_export import run_export
from skill_distill.decontamination import run_decontaminate
from skill_distill.io import read_json
from skill_distill.selection import fingerprint_file

REPO = Path(__file__).resolve().parents[1]
QS = REPO / "data" / "quickstart"


def section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.slow
def test_exports_carry_a_model_card(tmp_path, monkeypatch, shared_dir, tiny_qwen3_dir, qwen_tokenizer_dir):
    monkeypatch.chdir(tmp_path)
    assert shared_dir.is_dir()  # the registered sets resolve through the SKILL_DISTILL_DATA mirror
    pool = tmp_path / "pool" / "pool.jsonl"
    counts = run_decontaminate(str(QS / "pool.jsonl"), str(pool))
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    run = tmp_path / "run"
    cfg["trainer"].update(default_root_dir=str(run), max_epochs=1, precision="32-true", logger=False)
    callbacks = []
    for cb in cfg["trainer"]["callbacks"]:
        args = cb.setdefault("init_args", {})
        if cb["class_path"].endswith("SkillEvalCallback"):
            args.update(benchmarks=[{"name": "heldout", "limit_per_skill": 1, "limit": 6, "k": 1}], baseline=False,
                        sampling={"temperature": 0.0, "max_new_tokens": 8, "seed": 0},
                        backend={"class_path": "HFConfig", "init_args": {"dtype": "float32"}})
        if not cb["class_path"].endswith("RichProgressBar"):
            callbacks.append(cb)
    cfg["trainer"]["callbacks"] = callbacks
    cfg["model"].update(model=str(tiny_qwen3_dir))
    cfg["data"].update(corpus=str(pool), tokenizer=str(qwen_tokenizer_dir), max_length=256)
    cfg["data"]["selection"].update(budget=16)
    cfg["data"]["tree"] = str(QS / "tree.json")
    cfg["data"]["attribution"] = str(QS / "attribution.jsonl")
    cfg["data"]["profile"] = str(QS / "profile" / "profile.json")
    cfg["data"]["val_corpus"] = str(QS / "heldout.jsonl")
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(cfg))
    train.main(["fit", "--config", str(tmp_path / "fit.yaml")])

    card = (run / "hf_export" / "final" / "README.md").read_text()
    manifest = read_json(run / "selection_manifest.json")
    assert card.startswith("---\nlibrary_name: transformers\n")
    # inputs are named relative to the run directory, never by this machine's absolute paths
    assert f"Fully fine-tuned from `{os.path.relpath(tiny_qwen3_dir, run)}`" in card
    assert str(tmp_path) not in card and "| data.max_length | 256 |" in card
    selection = section(card, "Selection")
    assert "strategy: `skill`, budget 16, seed 42; 16 examples selected of a pool of 560" in selection
    assert f"corpus: `{fingerprint_file(pool)}`" in selection
    assert f"attribution: `{fingerprint_file(QS / 'attribution.jsonl')}`" in selection
    top = max(manifest["achieved"].items(), key=lambda kv: kv[1])
    assert f"| {top[0]} | {100 * top[1]:.1f} |" in selection
    assert "Skill-aware SFT (mode `full`)" in section(card, "Format")
    training = section(card, "Training")
    assert "| learning_rate | 5e-05 |" in training and "| max_epochs | 1 |" in training
    assert "| data.max_length | 256 |" in training
    assert (f"{counts['removed']} of 560 problems removed (hits by rule: exact {counts['hits_by_rule']['exact']}, "
            "ngram 0, similar") in section(card, "Decontamination")
    report = read_json(next((run / "eval").glob("epoch=*/report.json")))
    s = report["summary"]["heldout"]
    evaluation = section(card, "Evaluation")
    assert (f"| heldout | 1 | {s['problems']} | {100 * s['accuracy']:.1f} | {100 * s['ci_low']:.1f}-"
            f"{100 * s['ci_high']:.1f} |") in evaluation
    skills = [r for r in report["benchmarks"]["heldout"]["metrics"]["skills"] if r["accuracy"] is not None]
    assert skills and all(f"| {r['chain']} | {r['judged']} | {100 * r['accuracy']:.1f} |" in evaluation
                          for r in skills)

    # the export stage writes the same card from the checkpoint and its run directory
    out = run_export(str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "exported"))
    staged = (Path(out) / "README.md").read_text()
    for title in ("Selection", "Format", "Decontamination", "Evaluation"):
        assert section(staged, title) == section(card, title), title
    # with the trainer's rows, as the run recorded them (the callback's card also has the world size)
    for row in ("| max_epochs | 1 |", "| precision | 32-true |", "| accumulate_grad_batches | 1 |",
                f"| global_step | {read_json(run / 'run_finished.json')['global_step']} |"):
        assert row in training.replace("`", "") and row in section(staged, "Training").replace("`", ""), row
