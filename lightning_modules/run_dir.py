"""One run directory per training run: what an earlier run left in it, which checkpoint a resume starts from, and
which settings a resume may not change (docs/METHOD.md §6 fixes them for the whole run).

Plain files and torch only: ``train.py`` calls these before any class is built, so a refused run writes nothing.
It reads Lightning's checkpoint layout (``lightning_modules/checkpoint_export.py``), hence its place on this side.
The directory's paths are ``skill_distill.run_layout.RunLayout``'s.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from skill_distill.io import DataError
from skill_distill.run_layout import RunLayout

STEP_CHECKPOINT = re.compile(r"^step=(\d+)\.ckpt$")

# settings a resumed run may not change: (section, key) -> why it is fixed
# (the one list of what defines a run; ``trainer`` also holds ``seed_everything``, recorded by ResumableCheckpoint)
FIXED_SETTINGS: dict[str, tuple[str, ...]] = {
    # class_path: the module / data module class (train_cli.py's class selection, e.g. on-policy distillation);
    # distillation: the teacher (by name; its config hash is checked by CausalLMModule.on_load_checkpoint) and loss;
    # rollout, on_policy_loss, lmbda, prompt_weighting, steps_per_epoch: on-policy distillation's
    # (lightning_modules/on_policy.py)
    "model": ("class_path", "model", "model_dtype", "loss_implementation", "learning_rate", "weight_decay", "betas",
              "eps", "warmup_ratio", "min_lr_ratio", "max_grad_norm", "distillation", "rollout", "on_policy_loss",
              "lmbda"),
    "data": ("class_path", "corpus", "fields", "split", "tree", "attribution", "profile", "verdicts",
             "display_names", "selection", "skill_format", "instruction", "enable_thinking", "max_length",
             "examples_per_step", "packing", "shuffle", "seed", "tokenizer", "val_corpus", "reselection",
             "prompt_weighting", "steps_per_epoch"),
    "trainer": ("max_epochs", "max_steps", "accumulate_grad_batches", "precision", "seed_everything"),
}
DISPLAY_NAMES = {"trainer.seed_everything": "seed_everything"}
"""Settings reported under another name than ``section.key`` (the command line's)."""


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed from (None: it reads as a complete checkpoint).

    A file is a torch zip archive: its central directory must open and every member's CRC must match (a truncated
    or half-copied file fails here). A distributed checkpoint directory needs ``.metadata`` and Lightning's
    ``meta.pt``, the latter checked the same way."""
    from lightning_modules.checkpoint_export import LIGHTNING_META

    if path.is_dir():
        if not (path / ".metadata").is_file():
            return "no .metadata (an unfinished distributed save)"
        path = path / LIGHTNING_META
    if not path.is_file():
        return "missing"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"not a readable torch checkpoint ({e})"
    return f"member {bad} is corrupt" if bad else None


def resolve_resume(checkpoint_dir: Path, log=print) -> Path | None:
    """The checkpoint ``--ckpt_path last`` resumes from: ``last.ckpt`` when it reads, else the newest readable
    ``step=*.ckpt`` (said in one line through ``log``); None when the directory holds no checkpoint at all.
    Raises DataError when there are checkpoints but none reads."""
    last = checkpoint_dir / "last.ckpt"
    steps = sorted(((int(m.group(1)), p) for p in checkpoint_dir.glob("step=*.ckpt")
                    if (m := STEP_CHECKPOINT.match(p.name))), reverse=True)
    candidates = ([last] if last.exists() else []) + [p for _, p in steps]
    if not candidates:
        return None
    def target(candidate: Path) -> Path:  # what ``last`` points to, named as the run directory is
        real = candidate.resolve()
        return checkpoint_dir / real.name if real.parent == checkpoint_dir.resolve() else real

    problems = []
    for candidate in candidates:
        problem = checkpoint_problem(candidate)
        if problem is None:
            if problems:
                log(f"warning: {problems[0][0]} is unreadable ({problems[0][1]}): resuming from {target(candidate)}, "
                    "the newest readable checkpoint")
            return target(candidate)
        if all(target(candidate) != p for p, _ in problems):
            problems.append((target(candidate), problem))
    raise DataError(f"{checkpoint_dir}: no readable checkpoint ({problems[0][0]}: {problems[0][1]}); start a new run "
                    "with --trainer.default_root_dir <another directory>")


def read_checkpoint_meta(path: Path) -> dict:
    """A checkpoint's contents other than tensors' data (memory-mapped: a multi-GB file is not read)."""
    from lightning_modules.checkpoint_export import LIGHTNING_META, load_trusted

    return load_trusted(path / LIGHTNING_META if path.is_dir() else path, map_location="cpu", mmap=True)


def plain(value: Any) -> Any:
    """A setting as plain JSON-able data, so that a parsed config (jsonargparse Namespaces) and a checkpoint's
    hyperparameters (dataclasses, tuples) compare equal when they mean the same."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif hasattr(value, "as_dict") and callable(value.as_dict):  # jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "value") and type(value).__module__ != "builtins" and isinstance(value.value, (str, int)):
        return value.value  # an Enum
    return value


PATH_SETTINGS = {"data.corpus", "data.tree", "data.attribution", "data.profile", "data.verdicts",
                 "data.display_names", "data.val_corpus", "data.tokenizer", "model.model"}
"""Fixed settings that name a file: the same file is the same bytes, wherever it lies now (a moved or re-mounted
data directory resumes; the same name with other bytes does not)."""


_IDENTITY_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json")
"""What identifies a model or tokenizer directory: its architecture and vocabulary (a resumed run's weights come
from the checkpoint, not from the directory)."""


def _file_digest(value: str) -> str | None:
    """sha256 of the file a setting names (a pinned asset resolved), or of a model or tokenizer directory's identity
    files; None when it names nothing local (a hub name)."""
    from skill_distill.assets import resolve
    from skill_distill.io import sha256_file
    from skill_distill.selection import fingerprint_file

    if not value:
        return None
    try:
        folder = Path(resolve(value))
    except (DataError, OSError):
        return None
    if folder.is_dir():
        parts = [f"{name}:{sha256_file(folder / name)}" for name in _IDENTITY_FILES if (folder / name).is_file()]
        return ";".join(parts) or None
    try:
        return fingerprint_file(value)
    except DataError:
        return None


def _precision(value: Any) -> Any:
    """Lightning's precision spellings as one (``32``, ``"32"`` and ``"32-true"`` are one setting; Lightning's own
    normaliser is private)."""
    legacy = {"64": "64-true", "32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}
    return legacy.get(str(value), str(value)) if value is not None else None


def _leaf_changes(name: str, old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """(dotted name, old, new) of the changed leaves of a setting: a changed group is reported by its keys
    (``data.selection.budget``, not the whole block). A key the checkpoint does not record is not compared (it
    came with a newer version, at its default)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        changes = []
        for key in old:
            if key in new:
                changes += _leaf_changes(f"{name}.{key}", old[key], new[key])
        return changes
    return [] if _same(old, new) else [(name, old, new)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) or isinstance(b, float) and isinstance(a, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def changed_settings(saved: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]]) \
        -> list[tuple[str, Any, Any]]:
    """(dotted name, value in the checkpoint, value now) of every fixed setting that differs. A setting the
    checkpoint does not record is not compared."""
    changed = []
    for section, keys in FIXED_SETTINGS.items():
        for key in keys:
            if key not in saved.get(section, {}) or key not in current.get(section, {}):
                continue
            old, new = plain(saved[section][key]), plain(current[section][key])
            name = f"{section}.{key}"
            if name == "trainer.precision":
                old, new = _precision(old), _precision(new)
            # a name unchanged needs no hashing (the manifest's fingerprints guard a file edited in place)
            if name in PATH_SETTINGS and isinstance(old, str) and isinstance(new, str) and old != new:
                old_digest, new_digest = _file_digest(old), _file_digest(new)
                if old_digest is not None and new_digest is not None:
                    if old_digest != new_digest:
                        changed.append((name, old, f"{new} (different content)"))
                    continue
                if new_digest is not None and old_digest is None:
                    # the checkpoint's file is gone (moved): the selection manifest's fingerprints still guard it
                    continue
            changed += _leaf_changes(name, old, new)
    return [(DISPLAY_NAMES.get(name, name), old, new) for name, old, new in changed]


def read_finished(layout: RunLayout) -> dict | None:
    """The summary of a run that finished (None: it did not)."""
    p = layout.finished
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


def entries(root: Path) -> set[str] | None:
    """The names in a run directory before an attempt starts (None: it does not exist yet)."""
    return {p.name for p in root.iterdir()} if root.is_dir() else None


def discard_setup_leftovers(layout: RunLayout, before: set[str] | None) -> list[str]:
    """Remove what a new run refused during set-up (bad input, a bad setting) wrote into its run directory: the
    loggers' ``tb/`` and ``logs/``, the saved config, the manifest. Left there, they made the corrected command
    refuse the directory as holding an earlier run. ``before``: the directory's names before the attempt
    (``entries``). Nothing is removed once the run has a checkpoint; an evaluation report is kept (a resume reuses
    it). Returns the names removed."""
    import shutil

    root = layout.root
    if not root.is_dir() or any(layout.checkpoints.glob("step=*.ckpt")):
        return []
    reports = {p.relative_to(root).parts[0] for p in layout.evaluation_reports()}
    removed = []
    for path in sorted(root.iterdir()):
        if path.name in (before or set()) or path.name in reports or path == layout.lock:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    if before is None and not any(p != layout.lock for p in root.iterdir()):
        layout.release()
        try:
            root.rmdir()
        except OSError:  # another process's hold appeared meanwhile
            pass
    return removed
