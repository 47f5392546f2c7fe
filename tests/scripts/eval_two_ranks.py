"""A short quickstart fit with SkillEvalCallback on 1 or 2 CPU ranks (DDP or FSDP2, gloo), for
tests/test_skill_eval_callback.py.

    python tests/scripts/eval_two_ranks.py --model DIR --out RUN_DIR --devices 2 --port PORT [--strategy fsdp2] [--tp 2]

``--tp 2``: the two ranks share one tensor-parallel vLLM engine (one worker per core) instead of one engine each.

The callback takes a baseline evaluation (kept with its exported model) and one after the single training step;
each rank's engine runs in its own child process bound to its own core. The test reads RUN_DIR/eval/*/report.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# the benchmark sets and sampling the test re-runs on one rank for comparison
BENCHMARKS = [{"name": "heldout", "limit_per_skill": 1, "k": 2}, {"name": "aime24", "limit": 2, "k": 3}]
SAMPLING = {"temperature": 0.6, "top_p": 1.0, "max_new_tokens": 24, "seed": 7}


def config(out: Path, devices: int, strategy: str = "ddp", tp: int = 1) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    for key in ("corpus", "tree", "attribution", "val_corpus"):
        cfg["data"][key] = str(REPO / cfg["data"][key])
    cfg["data"].update(profile=None, selection={"strategy": "random", "budget": 16, "seed": 42})
    cfg["model"]["warmup_ratio"] = 0.0  # the single step has a non-zero learning rate, so the weights move
    trainer = cfg["trainer"]
    trainer.update(default_root_dir=str(out), devices=devices, max_steps=1, precision="32-true", limit_val_batches=0,
                   enable_progress_bar=False, logger=[{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                                       "init_args": {"save_dir": str(out), "name": "logs",
                                                                     "version": ""}}])
    if devices > 1 and strategy == "ddp":  # the process-group timeout must exceed the evaluation's time limit
        trainer["strategy"] = {"class_path": "lightning.pytorch.strategies.DDPStrategy",
                               "init_args": {"timeout": "0:20:00"}}
    elif devices > 1:  # FSDP2 as in configs/qwen3_*: the export gathers the sharded weights on every rank
        trainer["strategy"] = {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
                               "init_args": {"data_parallel_size": devices, "tensor_parallel_size": 1,
                                             "timeout": "0:20:00"}}
    trainer["callbacks"] = [{"class_path": "callbacks.SkillEvalCallback", "init_args": {
        "benchmarks": BENCHMARKS, "sampling": SAMPLING, "baseline": True, "keep_exports": True, "export_dtype": None,
        "timeout_s": 600,
        "backend": {"class_path": "VLLMConfig", "init_args": {"tensor_parallel_size": tp}}}}]
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--port", type=int, required=True, help="MASTER_PORT (tests pass one the OS chose)")
    ap.add_argument("--strategy", choices=["ddp", "fsdp2"], default="ddp")
    ap.add_argument("--tp", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(args.port))
    from skill_distill.gc_freeze import imports_frozen

    with imports_frozen():  # as train.py starts (skill_distill/gc_freeze.py)
        import torch

        import train_cli

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / f"config.rank{os.environ.get('LOCAL_RANK', '0')}.yaml"
    cfg_path.write_text(yaml.safe_dump(config(out, args.devices, args.strategy, args.tp)))
    train_cli.main(["fit", "--config", str(cfg_path), f"--model.model={args.model}", f"--data.tokenizer={args.model}"])


if __name__ == "__main__":
    main()
