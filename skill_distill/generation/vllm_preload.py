"""What a vLLM generation child imports, imported once by multiprocessing's fork server (``child_process``).

Only the fork server imports this module. It imports vLLM's offline engine (``from vllm import LLM``: 8.2 CPU s on
the 2-core machine) and the modules that build it, with the collector off and then frozen (``gc_freeze``), as a
spawned child imported them; every child forked afterwards starts with them. vLLM itself forks its engine core from
a process in this state (its default start method where CUDA is not yet initialised).
"""

from skill_distill.gc_freeze import imports_frozen

with imports_frozen():
    import vllm.entrypoints.llm  # noqa: F401

    import skill_distill.generation.factory  # noqa: F401
    import skill_distill.generation.vllm_backend  # noqa: F401
