"""Fine-tune a causal LM on skill-selected, skill-formatted teacher traces.

    python train.py fit --config configs/quickstart.yaml
    python train.py fit --config configs/qwen3_4b/skill_sft.yaml --trainer.num_nodes 2
    python train.py fit --config configs/quickstart.yaml --ckpt_path last

``--ckpt_path last`` resumes from the newest checkpoint of the run directory (model, optimizer, scheduler, data
position, selection manifest). ``validate`` runs the held-out loss.
"""

from __future__ import annotations

import os
import sys

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from datamodules import SkillDataModule
from lightning_modules import CausalLMModule
from skill_distill.io import ConfigError, DataError


class SkillCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # one tokenizer for data and export
        parser.link_arguments("data.tokenizer", "model.tokenizer")


def main(args: list[str] | None = None, run: bool = True) -> SkillCLI:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # dataclass fields document themselves in --help and --print_config through their attribute docstrings
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    return SkillCLI(
        CausalLMModule,
        SkillDataModule,
        trainer_defaults={"use_distributed_sampler": False},  # the data module plans batches per rank itself
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    try:
        main(sys.argv[1:] or None)
    except (DataError, ConfigError) as e:  # user-fixable: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
