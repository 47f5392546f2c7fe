from callbacks.hf_export import HFExportCallback
from callbacks.step_trace import StepTraceCallback

__all__ = ["HFExportCallback", "StepTraceCallback"]
