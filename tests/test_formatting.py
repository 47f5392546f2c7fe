"""Skill-aware formatting with the real Qwen3 tokenizer: exactly the assistant tokens are supervised."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.batching import IGNORE_INDEX, encode_example
from skill_distill.formatting import (
    SkillFormat,
    assistant_target,
    end_of_turn_token,
    final_solution,
    parse_skill_block,
    render_prompt,
    skill_block,
    user_message,
    user_turn,
)
from skill_distill.io import ConfigError
from skill_distill.skill_tree import SkillTree

REPO = Path(__file__).resolve().parents[1]
QS_TREE = REPO / "data" / "quickstart" / "tree.json"
SHORT = {"Arithmetic": "Arith", "subtraction": "minus", "Number Theory": "NT", "greatest common divisor": "gcd"}

TRACE = "<think>\nWe need 3 choose 2, which is 3.\n</think>\n\nThere are $\\binom{3}{2} = 3$ ways, so \\boxed{3}."
CHAINS = [("Probability", "counting principles"), ("Pre-Algebra", "basic arithmetic operations")]


def test_user_turn_is_the_standard_qwen_math_prompt():
    assert user_message("What is 2+2?") == (
        "Please reason step by step, and put your final answer within \\boxed{}.\n\nQuestion: What is 2+2?")


def test_skill_block_modes(shared_dir):
    tree = SkillTree.load(shared_dir / "skill_trees" / "skill_mix.json")
    assert skill_block(CHAINS, SkillFormat("full")) == (
        "Skills:\nProbability->counting principles\nPre-Algebra->basic arithmetic operations\n")
    assert skill_block(CHAINS, SkillFormat("topic")) == "Skills:\nProbability\nPre-Algebra\n"
    assert skill_block(CHAINS, SkillFormat("leaf")) == "Skills:\ncounting principles\nbasic arithmetic operations\n"
    assert skill_block(CHAINS, SkillFormat("window", depth_start=1, depth_end=1)) == (
        "Skills:\ncounting principles\nbasic arithmetic operations\n")
    assert skill_block(CHAINS, SkillFormat("off")) == ""
    # duplicates after shortening are written once
    assert skill_block([("Probability", "a"), ("Probability", "b")], SkillFormat("topic")) == "Skills:\nProbability\n"
    for c in CHAINS:
        tree.validate_chain(c, "test")
    assert assistant_target(TRACE, CHAINS, SkillFormat("full")).endswith(TRACE)
    assert final_solution(TRACE).startswith("There are")


def test_end_of_turn_is_im_end_for_chatml_else_eos(smollm2_dir):
    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    assert end_of_turn_token(AutoTokenizer.from_pretrained(smollm2_dir)) == "<|im_end|>"  # an unk token as well
    # no <|im_end|> in the vocabulary: its lookup gives the unk id, and EOS closes the turn
    word_level = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "</s>": 2}, unk_token="<unk>"))
    assert end_of_turn_token(PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>",
                                                     eos_token="</s>")) == "</s>"
    with pytest.raises(ValueError, match=r"neither <\|im_end\|> nor an eos_token"):
        end_of_turn_token(PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>"))


def test_a_tokenizer_without_end_of_turn_names_a_fix_that_exists():
    """The message once told users to "set end_of_turn explicitly", a setting no config has."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "</s>": 2}, unk_token="<unk>"))
    with pytest.raises(ConfigError) as caught:
        end_of_turn_token(PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>"))
    message = str(caught.value)
    assert "end_of_turn" not in message  # no such setting
    # the real fixes: the option that picks the tokenizer, or the tokenizer file's eos_token
    assert "data.tokenizer" in message and '"eos_token"' in message and "tokenizer_config.json" in message
    assert "\n" not in message


def test_exactly_the_assistant_tokens_are_supervised(qwen_tokenizer):
    tok = qwen_tokenizer
    prompt = render_prompt(tok, user_message("How many ways to choose 2 of 3?"), enable_thinking=True)
    eot = end_of_turn_token(tok)
    assert eot == "<|im_end|>"
    target = assistant_target(TRACE, CHAINS, SkillFormat("full")) + eot
    ex = encode_example(tok, "x", prompt, target, max_length=4096)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    # labels are pre-shifted: position t predicts token t+1
    supervised = [ex.input_ids[t + 1] for t, lab in enumerate(ex.labels) if lab != IGNORE_INDEX]
    assert supervised == ex.input_ids[len(prompt_ids):]
    assert all(lab == IGNORE_INDEX for lab in ex.labels[: len(prompt_ids) - 1])
    text = tok.decode(supervised)
    assert text == target  # the skill block before <think>, the think block, the solution, the end of turn
    assert text.startswith("Skills:\nProbability->counting principles\n") and "<think>" in text
    assert supervised[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert ex.labels[-1] == IGNORE_INDEX and not ex.truncated


def test_qwen3_template_would_drop_the_skill_block(qwen_tokenizer):
    """Why the target is appended verbatim: the template rebuilds assistant turns from their <think> part."""
    target = assistant_target(TRACE, CHAINS, SkillFormat("full"))
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": target}]
    rendered = qwen_tokenizer.apply_chat_template(msgs, tokenize=False)
    assert "Skills:" not in rendered


def test_truncation_keeps_prompt_and_counts(qwen_tokenizer):
    tok = qwen_tokenizer
    prompt = render_prompt(tok, user_message("q"))
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    ex = encode_example(tok, "x", prompt, TRACE * 20 + "<|im_end|>", max_length=n_prompt + 10)
    assert ex.truncated and len(ex.input_ids) == n_prompt + 10 and ex.num_supervised == 10
    assert encode_example(tok, "x", prompt, TRACE, max_length=n_prompt) is None


def test_the_block_training_writes_is_read_back_in_tree_names():
    """Evaluation reads exactly what training wrote: the configured header, and display names mapped back."""
    base = SkillTree.load(QS_TREE)
    tree = SkillTree(base.root, base.source, SHORT)
    chains = [("Arithmetic", "subtraction"), ("Number Theory", "greatest common divisor")]
    fmt = SkillFormat("full", header="Skills used:", use_display_names=True)
    block = skill_block(chains, fmt, tree)
    assert block == "Skills used:\nArith->minus\nNT->gcd\n"
    assert parse_skill_block(block + TRACE, fmt, tree) == chains
    assert parse_skill_block(block + TRACE) is None  # another header is no block
    topic = SkillFormat("topic", header="Skills used:", use_display_names=True)
    assert parse_skill_block(skill_block(chains, topic, tree) + TRACE, topic, tree) == [("Arithmetic",),
                                                                                        ("Number Theory",)]
    leaf = SkillFormat("leaf", use_display_names=True)
    assert parse_skill_block(skill_block(chains, leaf, tree) + TRACE, leaf, tree) == [("subtraction",),
                                                                                    ("greatest common divisor",)]


def test_tree_in_prompt_is_part_of_the_user_turn():
    tree = SkillTree.load(QS_TREE)
    fmt = SkillFormat("off", tree_in_prompt=True)
    text = user_turn("What is 2+2?", fmt=fmt, tree=tree)
    assert text.startswith("Skill tree:\n- Arithmetic\n  - single-digit addition\n")
    assert text.endswith(user_message("What is 2+2?"))
    assert user_turn("What is 2+2?", fmt=SkillFormat("full"), tree=tree) == user_message("What is 2+2?")
    with pytest.raises(ValueError, match="tree_in_prompt"):
        user_turn("What is 2+2?", fmt=fmt, tree=None)


def test_paper_preset_writes_an_empty_block_for_an_example_without_chains():
    """docs/METHOD.md, appendix: the reference writes "Skills:\n" + "" + "\n" before the trace."""
    paper = SkillFormat("full", preset="paper")
    assert assistant_target(TRACE, [], paper) == "Skills:\n" + "" + "\n" + TRACE
    assert assistant_target(TRACE, [], SkillFormat("full")) == TRACE  # the project's default: no block
    assert assistant_target(TRACE, CHAINS[::-1], paper) == (  # chains in the order given (the reply's)
        "Skills:\nPre-Algebra->basic arithmetic operations\nProbability->counting principles\n" + TRACE)
    assert parse_skill_block(assistant_target(TRACE, [], paper), paper) == []


@pytest.mark.parametrize("kwargs,message", [
    ({"mode": "chain"}, r"skill_format.mode='chain': choose one of off, full, topic, leaf, window"),
    ({"mode": "window", "depth_start": -1}, r"skill_format.depth_start=-1: must be >= 0"),
    ({"mode": "window", "depth_start": 2, "depth_end": 1}, r"skill_format.depth_end=1: must be >= depth_start \(2\)"),
    ({"header": ""}, r"skill_format.header='': must be one non-empty line"),
    ({"header": "Skills:\nmore"}, r"skill_format.header=.*: must be one non-empty line"),
    ({"preset": "reference"}, r"skill_format.preset='reference': choose one of project, paper"),
])
def test_skill_format_checks_itself_when_built(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SkillFormat(**kwargs)
    assert SkillFormat("window", depth_start=1, depth_end=1).depth_end == 1  # a valid one builds
