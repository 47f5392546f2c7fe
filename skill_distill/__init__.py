"""Plain-Python domain logic of skill-aware reasoning distillation.

Each stage of the method has one module: ``skill_tree`` (the taxonomy), ``corpus`` (reading a teacher pool),
``attribution`` (LLM walk of the tree), ``profile`` (student per-skill accuracy), ``selection`` (budgeted
sampling toward weak skills), ``formatting`` (prompts and skill-aware responses), ``grading`` (answer
checking), ``generation`` (vLLM / HTTP / HF backends) and ``export`` (HF directories). The Lightning pieces in
``lightning_modules/``, ``datamodules/`` and ``callbacks/`` call these; nothing here imports Lightning.
"""
