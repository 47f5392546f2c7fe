from callbacks.hf_export import HFExportCallback
from callbacks.reselection import ReselectionCallback
from callbacks.skill_eval import SkillEvalCallback
from callbacks.step_trace import StepTraceCallback

__all__ = ["HFExportCallback", "ReselectionCallback", "SkillEvalCallback", "StepTraceCallback"]
