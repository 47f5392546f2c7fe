from callbacks.hf_export import HFExportCallback

__all__ = ["HFExportCallback"]
