"""Fine-tune a causal LM on skill-selected, skill-formatted teacher traces.

    python train.py fit --config configs/quickstart.yaml
    python train.py fit --config configs/base/sft.yaml --config configs/models/qwen3_4b.yaml \
        --config configs/runs/skill_sft.yaml --trainer.default_root_dir runs/qwen3_4b/skill_sft --ckpt_path last
    python train.py fit --config configs/quickstart.yaml --ckpt_path last

One run directory per run, ``trainer.default_root_dir``: checkpoints, logs, evaluations, exports, traces and the
selection manifest all go inside it (relative paths of callbacks and loggers are taken inside it). A directory that
holds an earlier run is resumed with ``--ckpt_path last`` (the newest readable checkpoint of
``<run dir>/checkpoints``; a new run when there is none yet) and refused otherwise; a finished run resumed is a no-op.
A run directory is held by one run at a time (``<run dir>/run.lock``): a second run started into it is refused
naming the holder, and the hold of a run that was killed is taken over.
A resume that changes a setting fixed for the whole run (optimizer, schedule, data, selection) is refused naming the
setting. ``validate`` runs the held-out loss.
"""

# Only the entry point lives here; the command line is train_cli.py. Processes started from this one (grader
# workers under the "spawn" start method, Lightning's launched ranks) import this file again as their __main__:
# kept this thin, that import loads nothing (no torch, no Lightning) before the child's own guards are armed.


def __getattr__(name: str):
    """``import train; train.main([...])`` (tests, scripts) reaches train_cli's names when first used."""
    import train_cli

    return getattr(train_cli, name)


if __name__ == "__main__":
    from skill_distill.gc_freeze import imports_frozen

    with imports_frozen():  # the stack's objects live until exit: keep the collector off them (see that module)
        import train_cli

    train_cli.run_from_command_line()
