from datamodules.skill_datamodule import SkillDataModule

__all__ = ["SkillDataModule"]
