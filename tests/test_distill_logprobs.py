"""The teacher-logprobs stage (skill_distill/teacher_logprobs.py): it stores the teacher's top-k logprobs at exactly
the positions training supervises, tokenised as the datamodule tokenises (skill format included), equal to a full
forward's; it resumes after its last written part and shards; training reads it by example id and gives the loss of
the same top-k taken from the teacher in-process; bad input is one line: an example without stored logprobs, stored
logprobs made with another tokenizer, a teacher whose vocabulary is not the tokenizer's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datamodules import SkillDataModule
from datamodules.batching import IGNORE_INDEX, SFTCollator
from skill_distill.formatting import SkillFormat
from skill_distill.generation.factory import HFConfig, OpenAIConfig, VLLMConfig
from skill_distill.io import ConfigError, DataError
from skill_distill.teacher_logprobs import TeacherLogprobStore, run_teacher_logprobs

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "data" / "quickstart"
IDS = [f"qs-{i:06d}" for i in (0, 3, 7, 11, 19)]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from skill_distill.assets import tiny_qwen3_dir

    return tiny_qwen3_dir(tmp_path_factory.mktemp("teacher") / "tiny", seed=1)


@pytest.fixture(scope="module")
def ids_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ids") / "ids.json"
    path.write_text(json.dumps(IDS))
    return path


def datamodule(tokenizer, **kw) -> SkillDataModule:
    """The training datamodule on the quickstart corpus, skill-formatted as the quickstart trains, these ids only."""
    from skill_distill.corpus import load_corpus

    dm = SkillDataModule(corpus=str(QUICKSTART / "pool.jsonl"), tokenizer=str(tokenizer),
                         tree=str(QUICKSTART / "tree.json"), attribution=str(QUICKSTART / "attribution.jsonl"),
                         skill_format=SkillFormat(mode="full"), max_length=kw.pop("max_length", 160), **kw)
    dm._load_tree_and_chains()
    by_id = {e.id: e for e in load_corpus(dm.corpus, dm.fields)}
    dm.train_examples, _ = dm.format_and_tokenize([by_id[i] for i in IDS])
    return dm


def stage(out: Path, teacher: Path, tokenizer: Path, ids_file: Path, **kw) -> dict:
    return run_teacher_logprobs(corpus=str(QUICKSTART / "pool.jsonl"), teacher=str(teacher), output_dir=str(out),
                                tokenizer=str(tokenizer), ids=str(ids_file), skill_format=SkillFormat(mode="full"),
                                tree=str(QUICKSTART / "tree.json"), attribution=str(QUICKSTART / "attribution.jsonl"),
                                max_length=kw.pop("max_length", 160), backend=HFConfig(dtype="float32"),
                                examples_per_part=2,
                                chunk_size=kw.pop("chunk_size", 16), **kw)


@pytest.mark.slow
def test_stored_topk_is_the_teachers_at_the_supervised_positions(tmp_path, teacher, qwen_tokenizer_dir, ids_file):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "logprobs"
    result = stage(out, teacher, qwen_tokenizer_dir, ids_file)
    assert result["examples_written"] == 5 and len(list((out / "shard-0-of-1").glob("part-*.safetensors"))) == 3
    store = TeacherLogprobStore(out)
    assert len(store) == 5 and store.identity["name"] == str(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    examples = datamodule(qwen_tokenizer_dir).train_examples
    assert [e.example_id for e in examples] == IDS and any(e.truncated for e in examples)  # max_length cuts some
    for e in examples:
        supervised = torch.tensor(e.labels) != IGNORE_INDEX
        stored = store.get(e.example_id)
        assert stored.ids.dtype == torch.int32 and stored.logprobs.dtype == torch.float16
        assert stored.ids.shape == stored.logprobs.shape == (int(supervised.sum()), 20)
        assert torch.equal(stored.targets.long(), torch.tensor(e.labels)[supervised])  # the datamodule's tokens
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([e.input_ids])).logits[0, supervised].float(), -1)
        top = logp.topk(20, dim=-1)
        torch.testing.assert_close(stored.logprobs.float(), top.values, rtol=0, atol=1e-2)  # fp16 storage
        same_ids = (stored.ids.long() == top.indices).float().mean()
        assert same_ids > 0.97  # near-ties of a random model may swap under float reordering

    # a resumed run writes only the missing part; two shards hold the same rows as one run
    (out / "shard-0-of-1" / "part-00001.safetensors").unlink()
    assert stage(out, teacher, qwen_tokenizer_dir, ids_file)["examples_written"] == 2
    sharded = tmp_path / "sharded"
    for i in range(2):
        stage(sharded, teacher, qwen_tokenizer_dir, ids_file, shard_index=i, num_shards=2)
    again, split = TeacherLogprobStore(out), TeacherLogprobStore(sharded)
    for example_id in IDS:
        a, b = again.get(example_id), split.get(example_id)
        assert torch.equal(a.targets, b.targets) and torch.equal(a.ids, b.ids) and torch.equal(a.logprobs, b.logprobs)
    with pytest.raises(DataError, match="other settings"):  # the same directory, another k
        stage(out, teacher, qwen_tokenizer_dir, ids_file, top_k=8)


@pytest.mark.slow
def test_training_reads_stored_logprobs_by_example_id(tmp_path, teacher, qwen_tokenizer_dir, ids_file):
    """The module's loss from stored logprobs equals the loss with the same top-20 of the teacher run beside it."""
    from lightning_modules import CausalLMModule, distill_loss
    from lightning_modules.teacher import FrozenTeacher

    out = tmp_path / "logprobs"
    stage(out, teacher, qwen_tokenizer_dir, ids_file)
    cfg = distill_loss.DistillationConfig(teacher_logprobs=str(out), alpha=0.3, divergence="forward_kl")
    torch.manual_seed(0)
    student = {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 64}
    module = CausalLMModule(model_config=student, tokenizer=str(qwen_tokenizer_dir), attn_implementation="sdpa_packed",
                            distillation=cfg)
    module.configure_model()
    examples = datamodule(qwen_tokenizer_dir).train_examples
    batch = SFTCollator(0, packing=True)([(e, None) for e in examples[::-1]])  # another order than stored
    loss, ce, kd, n = module.forward_kd(batch)
    in_process = FrozenTeacher.build(str(teacher), "sdpa_packed", torch.float32)
    supervised = batch["labels"] != IGNORE_INDEX
    kwargs = {k: batch[k] for k in ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}
    hidden = in_process.final_hidden(batch["input_ids"], **kwargs)[supervised]
    top = torch.log_softmax(hidden @ in_process.output_weight.T, -1).topk(20, dim=-1)
    hidden_s = module.model.get_decoder()(input_ids=batch["input_ids"], **kwargs).last_hidden_state[supervised]
    ref, ref_ce, ref_kd = distill_loss.supervised_kd(
        hidden_s, module.model.lm_head.weight, None, batch["labels"][supervised],
        distill_loss.TeacherTopK(top.indices, top.values.half()), 0.3, "forward_kl")
    assert int(n) == int(supervised.sum()) and kd.item() > 0
    torch.testing.assert_close(loss, ref, rtol=2e-3, atol=1e-3)
    torch.testing.assert_close(kd, ref_kd, rtol=2e-3, atol=1e-3)

    # bad input, one line each: an example not stored; stored rows that are other tokens than this run's
    batch["example_ids"][0] = "not-stored"
    with pytest.raises(DataError, match="no stored teacher logprobs for example 'not-stored'"):
        module.forward_kd(batch)
    other = tmp_path / "other_max_length"
    stage(other, teacher, qwen_tokenizer_dir, ids_file, max_length=120)
    module._teacher_store = TeacherLogprobStore(other)
    batch = SFTCollator(0, packing=True)([(e, None) for e in examples])
    first_cut = next(e.example_id for e in examples if len(e.input_ids) > 120)  # the first whose tokens differ
    with pytest.raises(DataError, match=f"example '{first_cut}': the stored teacher logprobs are for other tokens"):
        module.forward_kd(batch)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a refused train.py run (in this process); minutes on a shared, loaded 2-core machine
def test_logprobs_made_with_another_tokenizer_are_refused_at_train_start(tmp_path, smollm2_dir, qwen_tokenizer_dir,
                                                                         shared_dir, monkeypatch, capfd):
    """SmolLM2's teacher-logprobs, a Qwen3-tokenised run: ``train.py fit`` stops before the first step, one line
    naming the example, exit 2; a stage run whose tokenizer is not the teacher's is refused in one line."""
    from test_distill_train import fit_in_process, write_corpus

    out = tmp_path / "smollm2_logprobs"
    corpus = write_corpus(shared_dir, tmp_path / "corpus.jsonl")
    run_teacher_logprobs(corpus=str(corpus), teacher=str(smollm2_dir), output_dir=str(out), max_length=128,
                         backend=HFConfig(dtype="float32"), top_k=4)
    with pytest.raises(ConfigError, match="^cross-tokenizer distillation is not supported"):
        run_teacher_logprobs(corpus=str(corpus), teacher=str(smollm2_dir), output_dir=str(tmp_path / "x"),
                             tokenizer=str(qwen_tokenizer_dir), max_length=128)

    from skill_distill.assets import tiny_qwen3_dir

    code, err = fit_in_process(monkeypatch, capfd, tmp_path, tmp_path / "run",
                                   tiny_qwen3_dir(tmp_path / "unused_teacher"), corpus, qwen_tokenizer_dir,
                                   "--model.distillation.teacher=null", f"--model.distillation.teacher_logprobs={out}")
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith(f"error: {out}: example 'm"), err[-3000:]
    assert "other tokens than this run's tokenisation" in last


def test_a_backend_without_prompt_logprobs_is_refused_in_one_line(tmp_path):
    """The backend is chosen by class_path as in the other stages; an OpenAI-compatible server cannot score every
    prompt position, so it is refused before any input is read."""
    with pytest.raises(ConfigError, match="^backend: OpenAIConfig cannot give the teacher's logprobs"):
        run_teacher_logprobs(corpus=str(tmp_path / "absent.jsonl"), teacher="unused", output_dir=str(tmp_path / "o"),
                             backend=OpenAIConfig(base_url="http://127.0.0.1:9"))
    assert not (tmp_path / "o").exists()


def test_the_shipped_config_chooses_the_backend_by_class_path():
    """configs/pipeline/teacher_logprobs_omr.yaml's backend is a VLLMConfig (class_path), with its settings."""
    import yaml
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_function_arguments(run_teacher_logprobs)
    config = yaml.safe_load((REPO / "configs/pipeline/teacher_logprobs_omr.yaml").read_text())
    backend = parser.instantiate_classes(parser.parse_object(config)).backend
    assert isinstance(backend, VLLMConfig)
    assert (backend.dtype, backend.tensor_parallel_size) == ("bfloat16", 1)


def test_the_stage_is_registered():
    proc = subprocess.run([sys.executable, "-m", "skill_distill"], capture_output=True, text=True, cwd=REPO)
    assert "teacher-logprobs" in proc.stdout
