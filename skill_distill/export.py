"""The project's one exporter: model weights -> an HF directory (safetensors, config, tokenizer, generation config)
that transformers and vLLM load.

Works for plain and FSDP2-sharded models: the full state dict is gathered with torch.distributed.checkpoint's
state-dict API (a collective: every rank must call), then rank 0 writes into a temporary directory that is renamed
into place, so a crash never leaves a half-written export.

``run_export`` (the ``export`` stage) consolidates a training checkpoint, sharded (torch.distributed.checkpoint,
any number of ranks) or single-file, into the same kind of directory, on one process without a GPU:

    python -m skill_distill export --checkpoint runs/qwen3_8b/skill_sft/checkpoints/last.ckpt \
        --output_dir runs/qwen3_8b/skill_sft/hf_export/last --dtype bfloat16
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path


def full_state_dict(model) -> dict:
    """The unsharded state dict on CPU (collective when parameters are DTensors)."""
    import torch

    is_sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
    if is_sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}


def tied_output_key(model) -> str | None:
    """State-dict key of the output embedding when it is tied to the input embedding (Qwen3-4B), else None."""
    if not getattr(model.config, "tie_word_embeddings", False) or model.get_output_embeddings() is None:
        return None
    out_emb = model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is out_emb:
            return f"{name}.weight"
    return None


def export_hf_model(model, tokenizer: str | None, out_dir: str | os.PathLike, is_global_zero: bool = True,
                    barrier: Callable[[], None] | None = None, dtype: str | None = None) -> str:
    """Export ``model`` (an HF PreTrainedModel) to ``out_dir``; returns the directory.

    ``config.use_cache`` is switched back on in the exported config (training turns it off). Tied input/output
    embeddings stay tied (the output matrix is not written twice). ``dtype`` casts floating weights (e.g.
    "bfloat16") on the way out.
    """
    state = full_state_dict(model)
    out = Path(out_dir)
    if is_global_zero:
        write_hf_dir(model, state, tokenizer, out, dtype)
    if barrier is not None:
        barrier()
    return str(out)


def write_hf_dir(model, state: dict, tokenizer: str | None, out_dir: str | os.PathLike,
                 dtype: str | None = None) -> Path:
    """Write ``state`` (full, unsharded, CPU tensors with ``model``'s names) as an HF directory for ``model``'s class
    and config, atomically (temporary directory, then rename). ``model`` may live on the meta device: only its
    class, config and generation config are used."""
    import torch

    tied = tied_output_key(model)
    if tied is not None:
        state = {k: v for k, v in state.items() if k != tied}  # tied to the input embeddings: written once
    out = Path(out_dir)
    if dtype is not None:
        target = getattr(torch, dtype)
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config = model.config.__class__.from_dict(model.config.to_dict())
        config.use_cache = True
        if dtype is not None:
            config.dtype = dtype
        # the model's own class writes the config and drops tied duplicates; we pass the gathered weights
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(tokenizer).save_pretrained(tmp)
        _readable(tmp)  # mkdtemp makes a private directory; exports are shared (vLLM servers, other users)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _readable(directory: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for f in directory.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)


# ---- consolidating training checkpoints ---------------------------------------------------------------------
PROJECT_PACKAGES = ("skill_distill", "datamodules", "lightning_modules", "callbacks")
LIGHTNING_META = "meta.pt"  # Lightning's non-tensor part of a distributed checkpoint
MODULE_PREFIX = "model."  # CausalLMModule keeps the HF model as ``self.model``


def checkpoint_globals(path: str | os.PathLike) -> tuple[list, list[str]]:
    """Classes a torch checkpoint file needs beyond ``weights_only`` defaults: (the project's own, importable
    ones; the names of any others)."""
    import importlib

    import torch

    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    ours, foreign = [], []
    for name in names:
        module, _, attr = name.rpartition(".")
        if name.split(".")[0] not in PROJECT_PACKAGES:
            foreign.append(name)
            continue
        try:
            ours.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            foreign.append(name)
    return ours, foreign


def load_trusted(path: str | os.PathLike, **kwargs):
    """``torch.load(weights_only=True)`` of a training checkpoint file, allowing the project's own config classes
    (hyperparameters hold dataclasses such as CorpusFields) and nothing else. Raises DataError otherwise."""
    import torch

    from skill_distill.io import DataError

    try:
        classes, foreign = checkpoint_globals(path)
    except Exception as e:  # noqa: BLE001 - not a torch zip file
        raise DataError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if foreign:
        raise DataError(f"{path}: holds objects of other code ({', '.join(foreign[:3])}); load it yourself with "
                        "torch.load(weights_only=False) if you trust it")
    with torch.serialization.safe_globals(classes):
        return torch.load(path, weights_only=True, **kwargs)


def read_training_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """The HF model weights and the Lightning checkpoint's other contents (hyperparameters, ...) of a checkpoint
    written by train.py: a distributed checkpoint directory (FSDP2, any number of ranks) or a single file.

    Only model weights are read (never optimizer state); a distributed checkpoint is read shard by shard into full
    CPU tensors without a process group. Raises DataError for a missing or foreign checkpoint.
    """
    import torch

    from skill_distill.io import DataError

    ckpt = Path(path)
    if ckpt.is_dir():
        if not (ckpt / LIGHTNING_META).is_file() or not (ckpt / ".metadata").is_file():
            raise DataError(f"{ckpt}: not a complete distributed checkpoint (needs .metadata and {LIGHTNING_META}); "
                            "an interrupted save leaves only a hidden .tmp-* directory: use the previous checkpoint")
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        meta = load_trusted(ckpt / LIGHTNING_META, map_location="cpu")
        reader = FileSystemReader(str(ckpt))
        entries = reader.read_metadata().state_dict_metadata
        prefix = "state_dict." + MODULE_PREFIX
        target = {k[len("state_dict."):]: torch.empty(md.size, dtype=md.properties.dtype)
                  for k, md in entries.items() if k.startswith(prefix) and isinstance(md, TensorStorageMetadata)}
        if not target:
            raise DataError(f"{ckpt}: no model weights under 'state_dict.{MODULE_PREFIX}*'; not written by train.py?")
        loaded = {"state_dict": target}
        with warnings.catch_warnings():  # "no process group: loading in a single process" is the intent here
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(loaded, storage_reader=reader, no_dist=True)
        weights = loaded["state_dict"]
    elif ckpt.is_file():
        meta = load_trusted(ckpt, map_location="cpu", mmap=True)
        weights = meta.pop("state_dict", None)
        if not weights:
            raise DataError(f"{ckpt}: no 'state_dict' in this checkpoint; not written by train.py?")
    else:
        raise DataError(f"checkpoint not found: {ckpt}")
    state = {k[len(MODULE_PREFIX):]: v for k, v in weights.items() if k.startswith(MODULE_PREFIX)}
    if not state:
        raise DataError(f"{ckpt}: no weights named '{MODULE_PREFIX}*' (the CausalLMModule's model)")
    return state, meta


def model_skeleton(hparams: dict, model: str | None = None):
    """The HF model of a CausalLMModule's hyperparameters (``model`` overrides the recorded name/path), with its
    parameters on the meta device: class, config and generation config only."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from lightning_modules.sharding import parameters_on_meta
    from skill_distill import assets

    source = model or hparams.get("model")
    if hparams.get("model_config") and not model:
        cfg = dict(hparams["model_config"])
        config = AutoConfig.for_model(cfg.pop("model_type", "qwen3"), **cfg)
        source = None
    else:
        from skill_distill.io import DataError

        if not source:
            raise DataError("the checkpoint records no model name or config; pass --model <HF dir or hub name>")
        source = assets.resolve(source)
        config = AutoConfig.from_pretrained(source)
    with parameters_on_meta():
        skeleton = AutoModelForCausalLM.from_config(config)
    if source and Path(source, "generation_config.json").is_file():
        skeleton.generation_config = GenerationConfig.from_pretrained(source)
    return skeleton


def run_export(checkpoint: str, output_dir: str, dtype: str | None = None, model: str | None = None,
               tokenizer: str | None = None) -> str:
    """Consolidate a training checkpoint into an HF directory (safetensors, config, generation config, tokenizer)
    that transformers and vLLM load (the ``export`` stage).

    Args:
        checkpoint: a checkpoint of ``train.py``: a distributed (FSDP2, any number of ranks) checkpoint directory
            such as ``runs/x/checkpoints/last.ckpt``, or a single-file checkpoint.
        output_dir: the HF directory to write (replaced atomically if it exists).
        dtype: cast floating weights (e.g. bfloat16 for serving); None keeps the training dtype.
        model: the base model's HF directory or hub name when the recorded one is not reachable here (its config
            and generation config are used, never its weights).
        tokenizer: tokenizer to save alongside (default: the one recorded in the checkpoint).

    Returns the output directory. Raises DataError for a missing, incomplete or foreign checkpoint.
    """
    from skill_distill import assets

    state, meta = read_training_checkpoint(checkpoint)
    hparams = dict(meta.get("hyper_parameters") or {})
    skeleton = model_skeleton(hparams, model)
    missing = sorted(set(k for k in skeleton.state_dict() if k != tied_output_key(skeleton)) - set(state))
    if missing:
        from skill_distill.io import DataError

        raise DataError(f"{checkpoint}: {len(missing)} weights of {type(skeleton).__name__} missing "
                        f"(e.g. {missing[:3]}); does --model match the trained architecture?")
    tok = tokenizer or hparams.get("tokenizer") or (meta.get("datamodule_hyper_parameters") or {}).get("tokenizer") \
        or hparams.get("model") or model
    out = write_hf_dir(skeleton, state, assets.resolve(tok) if tok else None, output_dir, dtype)
    from skill_distill.console import summary

    summary("export", [f"checkpoint: {checkpoint}", f"HF model directory: {out}"])
    return str(out)
