from lightning_modules.causal_lm import CausalLMModule
from lightning_modules.on_policy import OnPolicyModule

__all__ = ["CausalLMModule", "OnPolicyModule"]
