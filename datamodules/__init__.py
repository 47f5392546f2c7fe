from datamodules.prompt_sampler import OnPolicyDataModule
from datamodules.skill_datamodule import SkillDataModule

__all__ = ["OnPolicyDataModule", "SkillDataModule"]
