"""Pipeline stages as commands: ``python -m skill_distill <stage> --config configs/pipeline/<stage>.yaml``.

Only the chosen stage's module is imported, so ``--help`` of one stage does not load vLLM.
"""

from __future__ import annotations

import contextlib
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
    "reaggregate-profile": ("skill_distill.profile", "reaggregate_profile",
                            "a profile under another tree or attribution from existing verdicts (no generation)"),
    "generate-traces": ("skill_distill.traces", "run_generate_traces",
                        "sample teacher traces, verify them and keep the correct ones"),
    "merge-traces": ("skill_distill.traces", "merge_trace_shards", "merge generate-traces shards"),
    "select-report": ("skill_distill.selection_report", "run_selection_report",
                      "select a budget and report its skills"),
    "teacher-logprobs": ("skill_distill.teacher_logprobs", "run_teacher_logprobs",
                         "store the teacher's top-k logprobs at every supervised position (logit distillation)"),
    "evaluate": ("skill_distill.evaluation", "run_evaluate", "per-skill evaluation of a model on benchmarks"),
    "run": ("skill_distill.project", "run_project",
            "run pool -> attribute -> profile -> select-report -> fit -> evaluate from one project config"),
    # the one stage on the Lightning side (it reads Lightning's checkpoint layout, importing no Lightning itself):
    # tests/test_architecture.py reads these strings as imports and allows only this one
    "export": ("lightning_modules.checkpoint_export", "run_export",
               "consolidate a (sharded) training checkpoint into an HF directory"),
}


def main(argv: list[str] | None = None, freeze_imports: bool = False) -> None:
    """Run the stage ``argv`` names. ``freeze_imports``: a process of its own, whose imports live until it exits
    (``skill_distill.gc_freeze``); not in a process that goes on after the stage (a test)."""
    from skill_distill.console import take_verbose_flag

    # --verbose (anywhere): also the library lines skill_distill.console.QUIET_LOG_LINES lists as noise
    argv = take_verbose_flag(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] not in STAGES:
        width = max(map(len, STAGES))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in STAGES.items()]
        print("usage: python -m skill_distill <stage> [--config FILE] [--help]\n\nstages:\n" + "\n".join(lines))
        raise SystemExit(0 if argv and argv[0] in {"-h", "--help"} else 2)
    module, func, _ = STAGES[argv[0]]
    from skill_distill.gc_freeze import imports_frozen

    with imports_frozen() if freeze_imports else contextlib.nullcontext():
        from jsonargparse import CLI, set_parsing_settings

        from skill_distill.cli_errors import StageArgumentParser, shows_help
        from skill_distill.console import quiet_library_noise
        from skill_distill.generation.base import GenerationError, GenerationInterrupted
        from skill_distill.io import ConfigError, DataError, OutputError

        set_parsing_settings(docstring_parse_attribute_docstrings=shows_help(argv[1:]))
        quiet_library_noise()
        stage_module = importlib.import_module(module)
    fn = getattr(stage_module, func)
    if hasattr(stage_module, "prepare_argv"):  # e.g. run: --profile.sampling.max_new_tokens=512 keeps the other keys
        argv = [argv[0], *stage_module.prepare_argv(argv[1:])]
    StageArgumentParser.argv = argv  # a YAML syntax error names its --config file
    try:  # jsonargparse's CLI over a dict of functions: only the chosen stage's function (and module) is loaded
        # a bad argument is one error line (StageArgumentParser), the same path as train.py's
        CLI({argv[0]: fn}, args=argv, as_positional=False, prog="python -m skill_distill",
            parser_class=StageArgumentParser)
    except GenerationInterrupted:
        raise
    # user-fixable problems (an input, a setting, an endpoint or engine, a full disk): one line, no traceback
    except (DataError, ConfigError, GenerationError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main(freeze_imports=True)
