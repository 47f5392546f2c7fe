"""Training checkpoints written by ``train.py`` (Lightning's layout) -> an HF directory: the ``export`` stage.

Lightning-specific, so it lives here and not in ``skill_distill``: a distributed checkpoint is a
torch.distributed.checkpoint directory with Lightning's non-tensor part in ``meta.pt``; the weights sit under
``state_dict.model.*`` (``CausalLMModule`` keeps the HF model as ``self.model``). Writing the HF directory is the
model-generic ``skill_distill.export.write_hf_dir``. ``run_export`` consolidates a checkpoint, sharded (any number
of ranks) or single-file, on one process without a GPU:

    python -m skill_distill export --checkpoint runs/qwen3_8b/skill_sft/checkpoints/last.ckpt \
        --output_dir runs/qwen3_8b/skill_sft/hf_export/last --dtype bfloat16
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from skill_distill.export import model_skeleton, tied_output_key, write_hf_dir

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


def saved_settings(meta: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The fixed settings a checkpoint written by train.py records: the module's and the data module's
    hyperparameters, and the trainer's settings kept in ResumableCheckpoint's state (``run_settings``)."""
    trainer: dict[str, Any] = {}
    for state in (meta.get("callbacks") or {}).values():
        if isinstance(state, Mapping) and isinstance(state.get("run_settings"), Mapping):
            trainer = dict(state["run_settings"])
            break
    sections = {"model": dict(meta.get("hyper_parameters") or {}),
                "data": dict(meta.get("datamodule_hyper_parameters") or {})}
    for hparams in sections.values():  # LightningCLI's subclass mode records the class as ``_class_path``
        if "_class_path" in hparams:
            hparams["class_path"] = hparams.pop("_class_path")
    return {**sections, "trainer": trainer}


def run_export(checkpoint: str, output_dir: str, dtype: str | None = None, model: str | None = None,
               tokenizer: str | None = None, run_dir: str | None = None) -> str:
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
        run_dir: the training run's directory, whose selection manifest and evaluation reports go into the
            model card ``README.md`` (default: the datamodule's run_dir, else the checkpoint folder's parent).

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
    from skill_distill.model_card import card_for_run, write_model_card

    data = dict(meta.get("datamodule_hyper_parameters") or {})
    if run_dir is None:  # <run dir>/checkpoints/<name>.ckpt, unless the datamodule recorded one
        run_dir = data.get("run_dir") or str(Path(checkpoint).resolve().parent.parent)
    # the trainer's rows (epochs, precision, accumulation) as the run recorded them, and the step trained to
    training = {**hparams, **saved_settings(meta)["trainer"], "global_step": meta.get("global_step")}
    write_model_card(out, card_for_run(model or hparams.get("model"), training, data, run_dir))
    from skill_distill.console import summary

    summary("export", [f"checkpoint: {checkpoint}", f"HF model directory (with its model card README.md): {out}"])
    return str(out)
