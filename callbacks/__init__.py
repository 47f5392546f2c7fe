from callbacks.hf_export import HFExportCallback
from callbacks.progress import ProgressLog
from callbacks.reselection import ReselectionCallback
from callbacks.skill_eval import SkillEvalCallback
from callbacks.step_trace import StepTraceCallback

__all__ = ["HFExportCallback", "ProgressLog", "ReselectionCallback", "SkillEvalCallback", "StepTraceCallback"]
