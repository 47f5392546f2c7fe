"""Generation with transformers' ``generate``: a fallback for machines without vLLM (and the baseline of
``benchmarks/bench_generation.py``).

Batches of ``batch_size`` sequences, left padding, prompts tokenized without special tokens (the rendered chat
template already holds them). Greedy when ``temperature == 0``.

Seeds: every sequence (prompt i, sample j) samples from its own ``torch.Generator`` seeded from
``(seeds[i], j)``, inside a logits processor that applies temperature and top-p and then leaves a single token
for ``generate``'s greedy step. So a prompt's samples do not depend on which other prompts share its batch or on
the batch size, up to floating-point rounding: padding a sequence changes its logits by rounding error, which can
flip a near-tie token (rare). Results are not the same numbers vLLM draws for the same seed.

Guided decoding is not supported (``supports_guided_choice = False``): ``allowed_lists`` is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

from skill_distill.generation.base import Completion, GenerationBackend, GenerationError, SamplingConfig


def _sequence_seed(prompt_seed: int, sample: int) -> int:
    return (int(prompt_seed) * 1_000_003 + sample) % (2**63 - 1)


class _PerRowSampler:
    """Logits processor: sample each row with its own generator, then mask every other token to -inf."""

    def __init__(self, generators, temperature: float, top_p: float):
        self.generators = generators
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids, scores):
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < self.top_p  # always keeps the most likely token
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        chosen = torch.stack([torch.multinomial(probs[r], 1, generator=g)[0] for r, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, chosen[:, None], 0.0)
        return out


class HFBackend(GenerationBackend):
    """Completions from a transformers causal LM loaded at construction.

    ``dtype``: a torch dtype name, or ``"auto"`` (float32 on CPU, bfloat16 on CUDA). ``device``: None picks CUDA
    when available. ``batch_size`` counts sequences (prompts x samples). Raises GenerationError when the model
    cannot be loaded.
    """

    supports_guided_choice = False

    def __init__(self, model: str, tokenizer: str | None = None, dtype: str = "float32", batch_size: int = 16,
                 device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        from skill_distill.assets import load_pretrained, load_tokenizer, resolve
        from skill_distill.io import ConfigError

        self.model_path = resolve(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.batch_size = max(1, int(batch_size))
        try:
            self.tokenizer = load_tokenizer(tokenizer or model, "backend.tokenizer" if tokenizer else "backend.model")
            self.model = load_pretrained(AutoModelForCausalLM.from_pretrained, model, "backend.model",
                                         dtype=getattr(torch, dtype))
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - transformers raises many types; the user needs one line
            raise GenerationError(f"cannot load {self.model_path} with transformers: {type(e).__name__}: {e}") from e
        self.model.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        if not eos:
            raise GenerationError(f"{self.model_path}: neither the model nor the tokenizer defines an EOS token")
        self.eos_ids = eos
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else eos[0]

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig, seeds: Sequence[int] | None = None,
                 allowed_lists: Sequence[Sequence[str]] | None = None) -> list[list[Completion]]:
        """``sampling.n`` completions per prompt, in order; ``allowed_lists`` is ignored (no guided decoding)."""
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        if not prompts:
            return []
        seeds = list(seeds) if seeds is not None else [sampling.seed + i for i in range(len(prompts))]
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        greedy = sampling.temperature == 0
        samples_per_prompt = 1 if greedy else sampling.n  # greedy samples are identical: decode once, copy
        # (prompt, sample) sequences, longest prompts first so batches hold similar lengths
        order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
        rows = [(i, j) for i in order for j in range(samples_per_prompt)]
        results: dict[tuple[int, int], Completion] = {}
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start: start + self.batch_size]
            for key, comp in zip(batch, self._generate_batch([ids[i] for i, _ in batch],
                                                             [_sequence_seed(seeds[i], j) for i, j in batch],
                                                             sampling, greedy), strict=True):
                results[key] = comp
        return [[results[(i, 0 if greedy else j)] for j in range(sampling.n)] for i in range(len(prompts))]

    def _generate_batch(self, prompt_ids: list[list[int]], row_seeds: list[int], sampling: SamplingConfig,
                        greedy: bool) -> list[Completion]:
        comps = []
        for toks, _, finished in self.generate_ids(prompt_ids, row_seeds, sampling.max_new_tokens,
                                                   None if greedy else sampling.temperature, sampling.top_p):
            comps.append(Completion(text=self.tokenizer.decode(toks, skip_special_tokens=True),
                                    num_tokens=len(toks), finished=finished))
        return comps

    def generate_ids(self, prompt_ids: list[list[int]], row_seeds: list[int], max_new_tokens: int,
                     temperature: float | None, top_p: float = 1.0, logprobs: bool = False) \
            -> list[tuple[list[int], list[float] | None, bool]]:
        """One batch of rows (token ids of a prompt each, left-padded together): per row the new tokens up to and
        including the first EOS, their log-probabilities under ``logits / temperature`` (with ``logprobs``, else
        None), and whether an EOS ended it. ``temperature`` None decodes greedily; otherwise row r samples with its
        own generator seeded ``row_seeds[r]`` (``_PerRowSampler``), so a row's sample does not depend on the batch.
        The one generate of this backend and of the on-policy rollout engine (``rollout.HFRolloutEngine``)."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for r, p in enumerate(prompt_ids):  # left padding: every prompt ends where generation starts
            input_ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            attention[r, width - len(p):] = 1
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
                                  temperature=None, top_p=None, top_k=None, return_dict_in_generate=True,
                                  output_logits=logprobs)
        processors = LogitsProcessorList()
        if temperature is not None:
            generators = [torch.Generator(device=self.device).manual_seed(s) for s in row_seeds]
            processors.append(_PerRowSampler(generators, temperature, top_p))
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                                      generation_config=config, logits_processor=processors)
        new = out.sequences[:, width:]
        picked = [None] * len(prompt_ids)
        if logprobs:  # the raw logits of every step; the chosen token's log-probability under logits / temperature
            scores = torch.stack(out.logits, dim=1).float().div(temperature or 1.0).log_softmax(-1)
            picked = scores.gather(-1, new[..., None]).squeeze(-1).cpu().tolist()
        eos = set(self.eos_ids)
        rows = []
        for toks, lps in zip(new.cpu().tolist(), picked, strict=True):
            end = next((k for k, t in enumerate(toks) if t in eos), None)
            keep = len(toks) if end is None else end + 1
            rows.append((toks[:keep], None if lps is None else lps[:keep], end is not None))
        return rows

    def close(self) -> None:
        self.model = None
        import gc

        gc.collect()
