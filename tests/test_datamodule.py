"""SkillDataModule's config checks and the typed view it gives the evaluation callback."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest

from datamodules.skill_datamodule import EvalContext, SkillDataModule
from skill_distill.formatting import SkillFormat
from skill_distill.io import ConfigError
from skill_distill.selection import SelectionConfig

REPO = Path(__file__).resolve().parents[1]
QS = REPO / "data" / "quickstart"


def test_tree_in_prompt_does_not_skip_the_tree_and_attribution_checks(qwen_tokenizer_dir):
    tok = str(qwen_tokenizer_dir)
    with pytest.raises(ConfigError, match="data.attribution"):  # skill selection still needs the attribution
        SkillDataModule(str(QS / "pool.jsonl"), tok, tree=str(QS / "tree.json"),
                        selection=SelectionConfig(strategy="skill"),
                        skill_format=SkillFormat("off", tree_in_prompt=True))
    with pytest.raises(ConfigError, match="tree_in_prompt"):  # the tree it shows must exist
        SkillDataModule(str(QS / "pool.jsonl"), tok, skill_format=SkillFormat("off", tree_in_prompt=True))
    SkillDataModule(str(QS / "pool.jsonl"), tok, tree=str(QS / "tree.json"),
                    skill_format=SkillFormat("off", tree_in_prompt=True))


def test_tree_in_prompt_reaches_the_training_prompt(qwen_tokenizer_dir):
    dm = SkillDataModule(str(QS / "pool.jsonl"), str(qwen_tokenizer_dir), tree=str(QS / "tree.json"),
                         skill_format=SkillFormat("off", tree_in_prompt=True), max_length=4096)
    dm.setup("fit")
    text = dm.tokenizer.decode(dm.train_examples[0].input_ids)
    assert "Skill tree:\n- Arithmetic\n  - single-digit addition" in text


def test_eval_context_is_what_training_used(tmp_path, qwen_tokenizer_dir):
    fmt = SkillFormat("full", header="Skills used:")
    dm = SkillDataModule(str(QS / "pool.jsonl"), str(qwen_tokenizer_dir), tree=str(QS / "tree.json"),
                         attribution=str(QS / "attribution.jsonl"), skill_format=fmt, instruction="Solve it.",
                         enable_thinking=False, val_corpus=str(QS / "heldout.jsonl"))
    dm.trainer = L.Trainer(default_root_dir=str(tmp_path), logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, accelerator="cpu", devices=1)
    ctx = dm.eval_context()
    assert ctx == EvalContext(val_corpus=str(QS / "heldout.jsonl"), fields=dm.fields, tree=str(QS / "tree.json"),
                              display_names=None, attribution=str(QS / "attribution.jsonl"), instruction="Solve it.",
                              enable_thinking=False, skill_format=fmt)
    with pytest.raises(AttributeError):
        ctx.tree = "other"  # frozen
