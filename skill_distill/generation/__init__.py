"""Generation backends behind one interface (see ``base.GenerationBackend``)."""

from skill_distill.generation.base import GenerationBackend, GenerationError, SamplingConfig

__all__ = ["GenerationBackend", "GenerationError", "SamplingConfig"]
