"""The model card (``README.md``) written into every HF export directory.

Pure functions over plain dicts and files, used by the export callback and the ``export`` stage: what the model
was fine-tuned from, on which selection (strategy, budget, seed, leaf shares, input fingerprints; docs/METHOD.md
§4), in which format (docs/METHOD.md §5), with which training configuration (§6), how the pool was
decontaminated against the evaluation sets, and the run's evaluation results per benchmark and per skill (§7).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from skill_distill.formatting import DEFAULT_INSTRUCTION
from skill_distill.io import atomic_write, read_json
from skill_distill.run_layout import RunLayout

CARD = "README.md"
TOP_LEAVES = 20
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_TRAINING_KEYS = ("learning_rate", "warmup_ratio", "min_lr_ratio", "weight_decay", "max_grad_norm", "model_dtype",
                  "attn_implementation", "gradient_checkpointing", "max_epochs", "precision", "global_step",
                  "world_size", "accumulate_grad_batches")
_DATA_KEYS = ("corpus", "tree", "attribution", "profile", "max_length", "examples_per_step", "packing", "seed",
              "enable_thinking", "val_corpus")


def run_facts(run_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The selection manifest and evaluation reports of a training run directory (None when absent):
    ``{"manifest", "evaluation", "baseline"}``. The evaluation is the report under ``<run>/eval*/<tag>/`` that covers
    the most benchmarks (the newest among those), the baseline the ``baseline`` report beside it."""
    out: dict[str, Any] = {"manifest": None, "evaluation": None, "baseline": None}
    if run_dir is None:
        return out
    layout = RunLayout(Path(run_dir))
    if layout.manifest.is_file():
        out["manifest"] = read_json(layout.manifest, "selection manifest")
    best, best_key = None, None
    for path in layout.evaluation_reports():
        if path.parent.name == "baseline":
            continue
        report = read_json(path, "evaluation report")
        key = (len(report.get("summary") or {}), path.stat().st_mtime)
        if best_key is None or key > best_key:
            best, best_key = (path, report), key
    if best is not None:
        out["evaluation"] = best[1]
        baseline = RunLayout.report(best[0].parent.parent, "baseline")
        if baseline.is_file():
            out["baseline"] = read_json(baseline, "evaluation report")
    return out


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list, tuple)):
        return f"`{json.dumps(v, default=str)}`"
    return f"`{v}`" if isinstance(v, str) else str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.1f}"


def _as_dict(value: Any) -> dict:
    """A config block as a dict: the datamodule's hyperparameters hold dataclasses (``SelectionConfig``,
    ``SkillFormat``) in a run, and dicts once read back from a checkpoint or a YAML file."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return dict(value or {})


def build_model_card(base_model: str | None, training: Mapping[str, Any], data: Mapping[str, Any],
                     manifest: Mapping | None = None, decontamination: Mapping | None = None,
                     evaluation: Mapping | None = None, baseline: Mapping | None = None,
                     title: str | None = None, pending: str | None = None) -> str:
    """The card's Markdown (HF front matter first). ``training``: the LightningModule's hyperparameters plus trainer
    facts (epochs, precision, steps); ``data``: the datamodule's hyperparameters (selection, skill format, lengths);
    ``manifest``: the selection manifest; ``decontamination``: the pool's counts; ``evaluation``/``baseline``: the
    final and the before-training evaluation reports (``skill_distill.evaluation.build_report``); ``pending``: the
    tag of an evaluation of these weights that has not run yet (the card is written again once it has)."""
    front = ["---", "library_name: transformers", "tags: [skill-distill, reasoning-distillation, math]"]
    if base_model and _HUB_ID.match(base_model) and not Path(base_model).exists():
        front.append(f"base_model: {base_model}")
    front.append("---")
    intro = (f"Fully fine-tuned from `{base_model}` with skill-distill: skill-based data selection and skill-aware "
             "fine-tuning on teacher reasoning traces (docs/METHOD.md).")
    lines = [*front, "", f"# {title or 'Skill-aware reasoning distillation'}", "", intro, ""]

    lines += ["## Selection", ""]
    sel = _as_dict(data.get("selection"))
    if manifest:
        cfg = manifest.get("config") or sel
        lines.append(f"- strategy: `{manifest.get('strategy')}`, budget {manifest.get('budget')}, seed "
                     f"{cfg.get('seed')}; {manifest.get('num_selected')} examples selected of a pool of "
                     f"{manifest.get('pool_size')} ({manifest.get('eligible')} eligible)")
        knobs = {k: cfg[k] for k in ("w_max", "temperature", "wrong_share", "max_depth") if k in cfg}
        if knobs:
            lines.append("- knobs: " + ", ".join(f"{k} = {_value(v)}" for k, v in knobs.items()))
        prints = manifest.get("fingerprints") or {}
        if prints:
            lines += ["- input fingerprints (sha256):"] + [f"  - {k}: `{v}`" for k, v in sorted(prints.items())]
        achieved, target, pool = (manifest.get(k) or {} for k in ("achieved", "target", "pool"))
        if achieved:
            top = sorted(achieved.items(), key=lambda kv: -kv[1])[:TOP_LEAVES]
            lines += ["", f"Leaf shares of the selection (top {len(top)} of {len(achieved)}, %):", ""]
            lines += _table(["leaf skill", "selected", "target", "pool"],
                            [[c, _pct(a), _pct(target.get(c)), _pct(pool.get(c))] for c, a in top])
    elif sel:
        lines.append(f"- strategy: `{sel.get('strategy')}` (no selection manifest in the run directory)"
                     + (f", budget {sel['budget']}, seed {sel.get('seed')}" if sel.get("strategy") != "all" else ""))
    else:
        lines.append("- no selection recorded")
    lines.append("")

    fmt = _as_dict(data.get("skill_format"))
    lines += ["## Format", ""]
    mode = fmt.get("mode", "off")
    if mode == "off":
        lines.append("Plain SFT: the assistant turn is the teacher trace (`<think> ... </think>` then the solution).")
    else:
        lines.append(f"Skill-aware SFT (mode `{mode}`): the model first writes a `{fmt.get('header', 'Skills:')}` "
                     "block, one skill chain per line (`Topic->leaf`), then its reasoning. Nothing about skills is "
                     "given at test time (docs/METHOD.md §5).")
    instruction = data.get("instruction") or DEFAULT_INSTRUCTION
    thinking = "on" if data.get("enable_thinking", True) else "off"
    lines.append(f"Prompt: `{instruction}` + blank line + `Question: {{problem}}`; thinking {thinking}.")
    if fmt:
        lines.append("- skill_format: " + ", ".join(f"{k} = {_value(v)}" for k, v in fmt.items()))
    lines.append("")

    lines += ["## Training", ""]
    rows = [[k, _value(training[k])] for k in _TRAINING_KEYS if training.get(k) is not None]
    rows += [[f"data.{k}", _value(data[k])] for k in _DATA_KEYS if data.get(k) is not None]
    lines += _table(["setting", "value"], rows) + [""]

    lines += ["## Decontamination", ""]
    if decontamination:
        d = decontamination
        by_bench = d.get("hits_by_benchmark") or {}
        rules = ", ".join(f"{rule} {count}" for rule, count in (d.get("hits_by_rule") or {}).items())
        lines.append(f"The pool was checked against {', '.join(d.get('benchmarks') or {})} "
                     "(skill_distill/decontamination.py: normalised exact match, similarity, containment): "
                     f"{d.get('removed')} of {d.get('checked')} problems removed (hits by rule: {rules}).")
        if by_bench:
            lines += [""] + _table(["benchmark", "hits"], [[k, v] for k, v in by_bench.items()])
    else:
        lines.append("No decontamination record for this pool (`decontamination.json` beside it).")
    lines.append("")

    lines += ["## Evaluation", ""]
    if pending:
        lines += [f"The evaluation `{pending}` of these weights had not finished when this card was written"
                  + (f"; shown below is the run's newest report, `{evaluation.get('tag')}`." if evaluation else "."),
                  ""]
    if evaluation:
        where = [f"epoch {evaluation['epoch']}" if evaluation.get("epoch") is not None else None,
                 f"step {evaluation['global_step']}" if evaluation.get("global_step") is not None else None]
        where = ", ".join(w for w in where if w)
        lines += [f"Report `{evaluation.get('tag')}`" + (f" ({where})" if where else "") + ":", ""]
        summary = evaluation.get("summary") or {}
        base = (baseline or {}).get("summary") or {}
        header = ["benchmark", "k", "problems", "accuracy %", "95% CI"] + (["before training %"] if base else [])
        rows = []
        for name, s in summary.items():
            row = [name, s.get("k"), s.get("problems"), _pct(s.get("accuracy")),
                   f"{_pct(s.get('ci_low'))}-{_pct(s.get('ci_high'))}"]
            if base:
                row.append(_pct((base.get(name) or {}).get("accuracy")))
            rows.append(row)
        lines += _table(header, rows)
        suite = (evaluation.get("metrics") or {}).get("eval/paper_suite/acc")
        if suite is not None:
            lines += ["", f"Mean over the paper's five benchmarks: {_pct(suite)}."]
        for name, b in (evaluation.get("benchmarks") or {}).items():
            skills = [r for r in ((b.get("metrics") or {}).get("skills") or []) if r.get("accuracy") is not None]
            if skills:
                lines += ["", f"Per skill on `{name}` ({b.get('skill_level') or 'skill'} level):", ""]
                lines += _table(["skill", "judged", "accuracy %"],
                                [[r["chain"], r.get("judged"), _pct(r["accuracy"])] for r in skills])
    else:
        lines.append("This run has no evaluation report (`python -m skill_distill evaluate` writes one).")
    return "\n".join(lines) + "\n"


def write_model_card(out_dir: str | os.PathLike, card: str) -> Path:
    """Write ``card`` as ``<out_dir>/README.md`` (atomically)."""
    path = Path(out_dir) / CARD
    with atomic_write(path) as f:
        f.write(card)
    return path


def card_for_run(base_model: str | None, training: Mapping[str, Any], data: Mapping[str, Any],
                 run_dir: str | os.PathLike | None, evaluation: Mapping | None = None, title: str | None = None,
                 pending: str | None = None) -> str:
    """``build_model_card`` with the manifest, evaluation reports and decontamination counts found from the run
    directory and the training corpus (``evaluation`` overrides the newest report on disk)."""
    from skill_distill.decontamination import read_counts

    facts = run_facts(run_dir)
    manifest = facts["manifest"]
    decontamination = (manifest or {}).get("decontamination")
    if decontamination is None and data.get("corpus"):
        decontamination = read_counts(data["corpus"])

    def named(value: Any) -> Any:
        """A card travels with the model: an absolute path is named relative to the run directory (an asset name,
        a hub id or a relative path stays as given)."""
        if isinstance(value, str) and os.path.isabs(value):
            return os.path.relpath(value, run_dir) if run_dir is not None else Path(value).name
        return value

    return build_model_card(named(base_model), {k: named(v) for k, v in training.items()},
                            {k: named(v) for k, v in data.items()}, manifest, decontamination,
                            evaluation or facts["evaluation"], facts["baseline"], title, pending)
