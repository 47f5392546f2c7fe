"""Pipeline stages as commands: ``python -m skill_distill <stage> --config configs/pipeline/<stage>.yaml``.

Only the chosen stage's module is imported, so ``--help`` of one stage does not load vLLM.
"""

from __future__ import annotations

import importlib
import sys

STAGES = {
    "make-data": ("skill_distill.synthetic", "run_make_data", "generate a synthetic skill-tagged corpus"),
    "make-composed-data": ("skill_distill.composed", "run_make_composed_data",
                           "generate a synthetic corpus whose problems chain 2-3 skills"),
    "pool": ("skill_distill.pool", "run_pool", "build a seeded pool and held-out slice from a teacher corpus"),
    "decontaminate": ("skill_distill.decontamination", "run_decontaminate",
                      "drop pool problems that overlap a benchmark"),
    "attribute": ("skill_distill.attribution", "run_attribution", "attribute examples to skill chains with an LLM"),
    "merge-attribution": ("skill_distill.attribution", "merge_attribution_shards", "merge attribution shards"),
    "profile": ("skill_distill.profile", "run_profile", "grade the student on the pool, per skill"),
    "merge-profile": ("skill_distill.profile", "merge_profile_shards", "merge profile shards into one profile"),
    "select-report": ("skill_distill.selection_report", "run_selection_report",
                      "select a budget and report its skills"),
    "evaluate": ("skill_distill.evaluation", "run_evaluate", "per-skill evaluation of a model on benchmarks"),
    "export": ("lightning_modules.checkpoint_export", "run_export",
               "consolidate a (sharded) training checkpoint into an HF directory"),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        width = max(map(len, STAGES))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in STAGES.items()]
        print("usage: python -m skill_distill <stage> [--config FILE] [--help]\n\nstages:\n" + "\n".join(lines))
        raise SystemExit(0 if argv and argv[0] in {"-h", "--help"} else 2)
    module, func, _ = STAGES[argv[0]]
    from jsonargparse import CLI, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)

    from skill_distill.io import ConfigError, DataError

    fn = getattr(importlib.import_module(module), func)
    try:  # jsonargparse's CLI over a dict of functions: only the chosen stage's function (and module) is loaded
        CLI({argv[0]: fn}, args=argv, as_positional=False, prog="python -m skill_distill")  # the tip's command
    except (DataError, ConfigError) as e:  # user-fixable input problems: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
