from lightning_modules.causal_lm import CausalLMModule

__all__ = ["CausalLMModule"]
