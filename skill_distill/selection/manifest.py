"""The selection manifest (docs/METHOD.md §4): written atomically, and reused by a resumed run only when its
inputs and config are unchanged."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict

from skill_distill.io import DataError, read_json, require_file, sha256_file, write_json
from skill_distill.selection.config import SelectionConfig
from skill_distill.selection.result import SelectionResult
from skill_distill.skill_tree import Chain, format_chain

MANIFEST_VERSION = 1


def fingerprint_file(path: str | os.PathLike) -> str:
    """sha256 hex digest of the file's content, a pinned asset's included (raises DataError if it does not exist)."""
    from skill_distill.assets import resolve

    return sha256_file(require_file(resolve(str(path)), "input file"))


def _config_dict(config: SelectionConfig) -> dict:
    d = asdict(config)
    d["difficulty_band"] = list(d["difficulty_band"])
    # written only when not at their defaults, so manifests of the paper's settings keep their bytes (and manifests
    # written before these fields existed still resume); a missing key means the default
    for key, default in (("profile_value", "accuracy"), ("correct_portion", None)):
        if d[key] == default:
            del d[key]
    return d


def _chain_map(d: Mapping[Chain, float | int]) -> dict[str, float | int]:
    return {format_chain(k): v for k, v in d.items()}


def write_manifest(path: str | os.PathLike, result: SelectionResult, config: SelectionConfig,
                   fingerprints: Mapping[str, str], decontamination: Mapping | None = None) -> None:
    """Atomically write the selection manifest: selected ids (in order), drawn leaf per id, weights, target vs
    achieved leaf distributions, the config, the fingerprints of the inputs (``{"corpus": sha256, ...}``) and the
    pool's decontamination counts (``skill_distill.decontamination.read_counts``; None when the pool has none)."""
    write_json(path, {
        "version": MANIFEST_VERSION,
        "strategy": result.strategy,
        "budget": result.budget,
        "num_selected": len(result.ids),
        "pool_size": result.pool_size,
        "eligible": result.eligible,
        "ids": list(result.ids),
        "drawn_leaf": {i: (None if c is None else format_chain(c)) for i, c in result.drawn_leaf.items()},
        "leaf_weights": _chain_map(result.leaf_weights),
        "target": _chain_map(result.target),
        "achieved": _chain_map(result.achieved),
        "achieved_all_chains": _chain_map(result.achieved_all_chains),
        "pool": _chain_map(result.pool),
        "divergence": {k: (None if math.isnan(v) else v) for k, v in result.divergence().items()},
        "notes": list(result.notes),
        "config": _config_dict(config),
        "fingerprints": dict(fingerprints),
        # only when the pool was decontaminated (a pool without counts keeps the manifest's earlier bytes)
        **({} if decontamination is None else {"decontamination": dict(decontamination)}),
    })


def load_manifest(path: str | os.PathLike, expected_fingerprints: Mapping[str, str],
                  config: SelectionConfig) -> list[str]:
    """The selected ids of a manifest, if it was made from the same inputs and config.

    Raises DataError naming what changed since the selection (e.g. the corpus, attribution, profile, or
    config fields) and how to proceed.
    """
    manifest = read_json(path, "selection manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("ids"), list):
        raise DataError(f"{path}: not a selection manifest (no 'ids' list); delete it to select again")
    saved = manifest.get("fingerprints") or {}
    inputs = sorted(set(saved) | set(expected_fingerprints))
    changed = [k for k in inputs if saved.get(k) != expected_fingerprints.get(k)]
    saved_config = manifest.get("config") or {}
    now = _config_dict(config)
    changed_fields = [f"{k}: {saved_config.get(k)!r} -> {v!r}" for k, v in now.items() if saved_config.get(k) != v]
    changed_fields += [f"{k}: {v!r} -> default" for k, v in saved_config.items() if k not in now]
    if changed_fields:
        changed.append(f"config ({'; '.join(changed_fields)})")
    if changed:
        raise DataError(f"{path}: {', '.join(changed)} changed since this selection was made; delete the manifest "
                        "to select again, or use a new run directory")
    return [str(i) for i in manifest["ids"]]
