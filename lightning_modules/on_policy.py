"""On-policy distillation (docs/METHOD.md, "On-policy distillation"): the student samples, the teacher scores every
sampled token, the loss is the per-token reverse KL estimated on the sampled tokens.

Each optimizer step (``OnPolicyModule.training_step``):

1. takes the step's B prompts from ``datamodules.prompt_sampler.OnPolicyDataModule`` (the selection's examples,
   uniform or by the selection's skill weights); rank r takes prompts r, r + W, ...;
2. if the run directory already holds this step's rollouts (a resumed run), replays them; otherwise loads the
   student's current weights into the rollout engine (``lightning_modules/weight_sync.py``, every
   ``sync_every_n_steps`` steps and always at the first sampling step of a process), checks the canary (every
   ``canary_every_n_syncs`` syncs), samples ``rollout.n`` completions per prompt
   (``skill_distill/generation/rollout.py``), scores them with the frozen teacher, and appends the step to
   ``<run dir>/rollouts/rank<r>.jsonl`` (one line per step, fsynced) BEFORE training on it. A resumed run therefore
   trains on exactly the rollouts the interrupted one drew, and the file is the data for analysis;
3. loss (``on_policy_loss: sampled_reverse_kl``): with ``r_t = log p_S(y_t) - log p_T(y_t)`` on the sampled
   tokens, the advantage is ``-r_t`` (no gradient through it, no discounting) and the loss is
   ``-advantage * log p_S(y_t)`` summed over the step's completion tokens and divided by their number across all
   ranks (token-normalised like SFT). Its gradient is an unbiased
   estimate of the gradient of the per-token reverse KL ``KL(p_S || p_T)`` along the student's own samples
   (``E_y~p_S[grad log p_S(y)] = 0`` removes the other term; ``tests/test_on_policy.py`` checks it exactly and by
   Monte Carlo). The advantage uses the learner's log-probabilities; the engine's (sampler's) are recorded too and
   equal them after a sync (the canary checks that).
   With ``on_policy_loss: full_vocabulary`` (GKD, Agarwal et al. 2024) the loss is instead ``model.distillation``'s
   chunked logit-distillation loss (``distill_loss.supervised_kd``: e.g. the generalised JSD with ``beta``, alpha 0)
   between the student's and the in-process teacher's whole next-token distributions at every completion position,
   normalised over the step's completion tokens the same way;
4. GKD's ``lmbda`` (Agarwal et al. 2024; TRL's meaning): the share of steps that are on-policy; the other steps train
   on the same prompts' teacher traces (cross-entropy, i.e. sequence-level KD), decided per step by a seeded draw.

Logged per step: ``train/reverse_kl`` (the sampled estimate, mean over completion tokens), ``train/rollout_length``,
``train/truncated_share`` (rollouts cut at ``rollout.max_new_tokens``), ``train/rollouts_per_s``,
``train/teacher_tokens_per_s``, ``train/canary_error`` when the canary ran, loss, learning rate and gradient norm.

The teacher is a frozen causal LM (same vocabulary as the student, else one line at start), kept out of the module's
parameters, checkpoints and optimizer.
"""

from __future__ import annotations

import time
import types
from pathlib import Path
from typing import Literal

import torch

from datamodules.batching import SFTCollator, pack_shared_prefix
from lightning_modules import distill_loss
from lightning_modules.causal_lm import CausalLMModule
from lightning_modules.packed_attention import PACKED_SDPA
from lightning_modules.weight_sync import check_weight_sync, sync_weights
from skill_distill.batch_contract import IGNORE_INDEX, MODEL_INPUTS, build_example
from skill_distill.generation.base import request_seed
from skill_distill.generation.rollout import RolloutConfig, RolloutEngine, make_rollout_engine
from skill_distill.io import ConfigError, JsonlAppender

TOKEN_LOGPROBS = "token_logprobs"
OnPolicyLoss = Literal["sampled_reverse_kl", "full_vocabulary"]
ROLLOUTS_DIR = "rollouts"


def token_logprobs(lm, input_ids: torch.Tensor, labels: torch.Tensor, chunk_size: int | None = None,
                   **model_kwargs) -> torch.Tensor:
    """log p(label) at every position whose label is not IGNORE_INDEX, in order (1-D, float32), through the
    project's one chunked ``distill_loss.token_logprobs`` (the positions x vocabulary logits never exist at once);
    bound to the HF model as a method so that FSDP2 runs it as a root forward (like ``lm_loss.supervised_ce``)."""
    hidden = lm.get_decoder()(input_ids=input_ids, use_cache=False, **model_kwargs).last_hidden_state
    head = lm.get_output_embeddings()
    supervised = labels != IGNORE_INDEX
    return distill_loss.token_logprobs(hidden[supervised], head.weight, labels[supervised], chunk_size or 256,
                                       bias=getattr(head, "bias", None))


def attach_token_logprobs(model) -> None:
    """Give an HF causal LM the method ``token_logprobs`` (idempotent)."""
    if not isinstance(getattr(model, TOKEN_LOGPROBS, None), types.MethodType):
        setattr(model, TOKEN_LOGPROBS, types.MethodType(token_logprobs, model))


def sampled_reverse_kl_loss(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """Sum over sampled tokens of ``-advantage * log p_S(y_t)`` with ``advantage = -(log p_S - log p_T)`` held
    constant (no gradient through it, no discounting). Divide by the step's token count to normalise."""
    advantage = -(student_logprobs.detach() - teacher_logprobs.to(student_logprobs.dtype))
    return -(advantage * student_logprobs).sum()


def is_on_policy_step(seed: int, step: int, lmbda: float) -> bool:
    """GKD's per-step choice: on-policy with probability ``lmbda`` (a seeded, resumable draw)."""
    if lmbda >= 1.0:
        return True
    if lmbda <= 0.0:
        return False
    return request_seed(seed, "lmbda", step) / (2**31 - 1) < lmbda


class RolloutLog:
    """``<run dir>/rollouts/rank<r>.jsonl``: one line per step, ``{"step", "rank", "rollouts": [...]}``, appended
    and fsynced before the step trains on it; a torn last line (a kill during the append) is dropped on reopen and
    the step sampled again."""

    def __init__(self, path: Path):
        self._appender = JsonlAppender(path, key="step")
        self.path = self._appender.path
        self.by_step = {int(r["step"]): r["rollouts"] for r in self._appender.rows}

    def get(self, step: int) -> list[dict] | None:
        return self.by_step.get(step)

    def write(self, step: int, rank: int, rollouts: list[dict]) -> None:
        self._appender.append([{"step": step, "rank": rank, "rollouts": rollouts}])
        self.by_step[step] = rollouts

    def close(self) -> None:
        self._appender.close()


class OnPolicyModule(CausalLMModule):
    """On-policy distillation of the student (``CausalLMModule``'s model, optimizer, schedule, FSDP2, export) toward
    a frozen teacher; see the module docstring.

    Args (beyond CausalLMModule's):
        distillation (CausalLMModule's): ``teacher`` names the frozen teacher (hub name, path or ``asset:``; same
            vocabulary as the student), ``teacher_dtype`` its dtype; it is built like the student (one builder,
            FSDP2-sharded under a device mesh) and kept out of checkpoints and the optimizer.
        rollout: how rollouts are sampled (``skill_distill.generation.rollout.RolloutConfig``).
        on_policy_loss: sampled_reverse_kl (the per-token reverse KL estimated on the sampled tokens) or
            full_vocabulary (GKD: ``distillation``'s loss, alpha x CE + (1 - alpha) x tau^2 x D with D its
            ``divergence``, e.g. jsd with ``beta``, over the whole vocabulary at every completion position; alpha 0
            is GKD's on-policy objective).
        rollout_model: the weights the rollout engine starts from (default: ``model``); synced before sampling.
        lmbda: share of on-policy steps (GKD); the others train on the prompts' teacher traces.
        sync_every_n_steps: load the student's weights into the engine every N on-policy steps (1: on-policy;
            larger: the sampler lags the learner by up to N - 1 steps).
        canary_every_n_syncs: run the weight-sync canary after every N-th sync (1 in tests).
        canary_tolerance: largest allowed log-probability difference between engine and trainer (1e-3 in fp32).
        canary_tokens: length of the canary's fixed token sequence (the first selected example's first tokens).
        share_prompts: pack each prompt once, followed by its n completions (each attends to the prompt and
            itself), for the teacher's scoring and the student's loss: the same log-probabilities as packing every
            (prompt, completion) pair, with the prompt computed once instead of n times. Only the ``sdpa_packed``
            attention reads that layout, so under any other (flash_attention_2 on GPUs) the pairs are packed.
    """

    def __init__(self, *args, rollout: RolloutConfig = RolloutConfig(),  # noqa: B008 - a dataclass default, as SkillDataModule's
                 on_policy_loss: OnPolicyLoss = "sampled_reverse_kl",
                 rollout_model: str | None = None, lmbda: float = 1.0, sync_every_n_steps: int = 1,
                 canary_every_n_syncs: int = 10, canary_tolerance: float = 1e-3, canary_tokens: int = 64,
                 share_prompts: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if self.distillation is None or self.distillation.teacher is None:
            raise ConfigError("model.distillation.teacher is not set: on-policy distillation scores the student's "
                              "samples with a teacher beside it (hub name, path or asset:<name>)")
        if on_policy_loss not in ("sampled_reverse_kl", "full_vocabulary"):
            raise ConfigError(f"model.on_policy_loss={on_policy_loss!r}: use sampled_reverse_kl or full_vocabulary")
        if not 0.0 <= lmbda <= 1.0:
            raise ConfigError(f"model.lmbda={lmbda}: must lie in [0, 1] (the share of on-policy steps)")
        for name, value in (("sync_every_n_steps", sync_every_n_steps), ("canary_every_n_syncs", canary_every_n_syncs),
                            ("canary_tokens", canary_tokens)):
            if value < 1:
                raise ConfigError(f"model.{name}={value}: must be >= 1")
        if not canary_tolerance > 0:
            raise ConfigError(f"model.canary_tolerance={canary_tolerance}: must be > 0")
        if rollout_model is None and self.model_name is None:
            raise ConfigError("model.rollout_model: the rollout engine needs weights to start from; set model.model "
                              "or model.rollout_model")
        self.rollout = rollout
        self.rollout_model = rollout_model or self.model_name
        self.engine: RolloutEngine | None = None
        self.rollout_log: RolloutLog | None = None
        self._synced_step: int | None = None
        self._syncs = 0
        self._canary_ids: list[int] | None = None
        self._step_metrics: dict[str, float] = {}

    # ---- models -------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        super().configure_model()  # the student, and the teacher (self.teacher, a FrozenTeacher)
        attach_token_logprobs(self.model)
        if self.device_mesh is not None:
            from torch.distributed.fsdp import register_fsdp_forward_method

            register_fsdp_forward_method(self.model, TOKEN_LOGPROBS)

    def _ensure_engine(self, prompts: list) -> RolloutEngine:
        if self.engine is None:  # a CPU engine's KV cache sized for the first step's rollouts of this rank
            longest = max(len(p.prompt_ids) for p in prompts) + self.rollout.max_new_tokens
            self.engine = make_rollout_engine(self.rollout, self.rollout_model, self.tokenizer_name,
                                              sequences=len(prompts) * self.rollout.n, tokens_per_sequence=longest)
        return self.engine

    def _ensure_log(self) -> RolloutLog:
        if self.rollout_log is None:
            run_dir = Path(self.trainer.default_root_dir)
            self.rollout_log = RolloutLog(run_dir / ROLLOUTS_DIR / f"rank{self.global_rank}.jsonl")
        return self.rollout_log

    def teardown(self, stage: str) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.rollout_log is not None:
            self.rollout_log.close()
            self.rollout_log = None

    # ---- rollouts -----------------------------------------------------------------------------------
    def _sync(self, step: int, engine: RolloutEngine) -> None:
        """Load the student's weights into the engine when due, and run the canary when due."""
        if self._synced_step is not None and step - self._synced_step < self.hparams.sync_every_n_steps:
            return
        sync_weights(engine, self.model)
        self._synced_step = step
        self._syncs += 1
        if (self._syncs - 1) % self.hparams.canary_every_n_syncs == 0:
            self._step_metrics["train/canary_error"] = check_weight_sync(
                engine, self.model, self._canary_ids, self.hparams.canary_tolerance, step=step)

    def _shares_prompts(self) -> bool:
        """Whether rollouts are packed with each prompt held once: asked for, and both models attend through the one
        implementation that reads the layout."""
        models = [self.model, self.teacher.model]
        return self.hparams.share_prompts and all(m.config._attn_implementation == PACKED_SDPA for m in models)

    def _collate(self, rollouts: list[dict]) -> dict:
        """One packed row of ``rollouts`` (consecutive rollouts of one prompt share it when ``_shares_prompts``);
        supervised positions in the order of ``rollouts`` and their completion tokens."""
        if self._shares_prompts():
            groups: list[tuple[list[int], list[list[int]]]] = []
            for r in rollouts:
                if groups and groups[-1][0] == r["prompt_tokens"]:
                    groups[-1][1].append(r["completion_tokens"])
                else:
                    groups.append((r["prompt_tokens"], [r["completion_tokens"]]))
            batch = pack_shared_prefix(groups)
        else:
            examples = [build_example(str(i), r["prompt_tokens"], r["completion_tokens"], 1 << 62)
                        for i, r in enumerate(rollouts)]
            batch = SFTCollator(0, packing=True).collate(examples)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _model_inputs(self, batch: dict) -> dict:
        return {k: batch[k] for k in MODEL_INPUTS if k in batch}

    def _make_rollouts(self, step: int, prompts: list) -> list[dict]:
        engine = self._ensure_engine(prompts)
        self._sync(step, engine)
        rc = self.rollout
        start = time.perf_counter()
        sampled = engine.sample([p.prompt_ids for p in prompts],
                                [request_seed(rc.seed, step, k, p.example_id) for k, p in enumerate(prompts)],
                                rc.n, rc.max_new_tokens, rc.temperature)
        # when the next sampling step loads weights first, the engine drops its weights too (GPU: sleep level 2;
        # CPU: the weight kernels) instead of keeping them aside
        engine.sleep(discard_weights=self.hparams.sync_every_n_steps == 1)
        sample_time = time.perf_counter() - start
        rows = []
        for p, outs in zip(prompts, sampled, strict=True):
            for j, r in enumerate(outs):
                rows.append({"prompt_id": p.example_id, "sample": j, "chains": p.chains, "leaf": p.leaf,
                             "prompt_tokens": list(p.prompt_ids), "completion_tokens": r.token_ids,
                             "student_logprobs": r.logprobs, "finished": r.finished})
        scored = [r for r in rows if r["completion_tokens"]]
        start = time.perf_counter()
        if scored:
            batch = self._collate(scored)
            with torch.no_grad():
                teacher_lp = self.teacher.token_logprobs(batch["input_ids"], batch["labels"], IGNORE_INDEX,
                                                         **self._model_inputs(batch)).cpu()
            offset = 0
            for r in scored:
                n = len(r["completion_tokens"])
                r["teacher_logprobs"] = teacher_lp[offset:offset + n].tolist()
                offset += n
        for r in rows:
            r.setdefault("teacher_logprobs", [])
        teacher_time = time.perf_counter() - start
        tokens = sum(len(r["completion_tokens"]) for r in rows)
        self._step_metrics.update({"train/rollouts_per_s": len(rows) / max(sample_time, 1e-9),
                                   "train/teacher_tokens_per_s": tokens / max(teacher_time, 1e-9)})
        return rows

    # ---- training -----------------------------------------------------------------------------------
    def _global_sum(self, value: float) -> float:
        if self.trainer.world_size == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        return float(self.trainer.strategy.reduce(total, reduce_op="sum")[0])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.trainer.accumulate_grad_batches != 1:
            raise ConfigError("trainer.accumulate_grad_batches must be 1 for on-policy distillation: one loader item "
                              "is a whole step (data.examples_per_step prompts)")
        step = self.global_step
        self._step_metrics = {}
        # Lightning zeroes gradients after training_step, just before backward; this step's rollouts, weight sync
        # and teacher scoring would otherwise run beside the last step's dead gradients (a whole model's worth: the
        # peak of an on-policy step on CPU, measured). One loader item is a whole optimizer step (checked above),
        # so nothing accumulated is lost.
        self.model.zero_grad(set_to_none=True)
        world, rank = self.trainer.world_size, self.global_rank
        prompts = batch["prompts"][rank::world]
        if self._canary_ids is None:
            self._canary_ids = list(batch["prompts"][0].example.input_ids[: self.hparams.canary_tokens])
        scale = self._data_parallel_size()  # DDP/FSDP average gradients over ranks: undo it (as in SFT)
        if not is_on_policy_step(self.rollout.seed, step, self.hparams.lmbda):
            sft = SFTCollator(0, packing=True).collate([p.example for p in prompts])
            sft = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in sft.items()}
            ce, n = self.model.supervised_ce(sft["input_ids"], sft["labels"], implementation=self.loss_implementation,
                                             chunk_size=self.hparams.loss_chunk_size, **self._model_inputs(sft))
            tokens = self._global_sum(float(n))
            self._step_metrics.update({"train/on_policy": 0.0, "train/teacher_trace_ce": float(ce) / max(float(n), 1)})
            self._log_step(float(ce.detach()) / max(float(n), 1.0))
            return ce * scale / max(tokens, 1.0)
        log = self._ensure_log()
        rows = log.get(step)
        if rows is None:
            rows = self._make_rollouts(step, prompts)
            log.write(step, rank, rows)  # on disk before the step trains on it
        scored = [r for r in rows if r["completion_tokens"]]
        lengths = [len(r["completion_tokens"]) for r in rows]
        tokens = self._global_sum(float(sum(lengths)))
        self._step_metrics.update({"train/on_policy": 1.0,
                                   "train/rollout_length": sum(lengths) / max(len(rows), 1),
                                   "train/truncated_share": sum(not r["finished"] for r in rows) / max(len(rows), 1)})
        if not scored:  # every completion empty: nothing to learn from, but every rank must still run backward
            loss = sum(p.sum() for p in self.model.parameters()) * 0.0
            self._log_step(0.0)
            return loss
        batch_t = self._collate(scored)
        teacher = torch.tensor([x for r in scored for x in r["teacher_logprobs"]], device=self.device)
        if self.hparams.on_policy_loss == "full_vocabulary":
            # GKD on the student's samples: model.distillation's divergence (jsd with beta, or a KL) between the
            # student's and the teacher's whole next-token distributions at every completion position, chunked
            loss_sum, _, d_sum, _ = self.forward_kd(batch_t)
            sampler = torch.tensor([x for r in scored for x in r["student_logprobs"]], device=self.device)
            rkl = self._global_sum(float((sampler - teacher).sum())) / max(tokens, 1.0)
            self._step_metrics[f"train/{self.distillation.divergence}"] = self._global_sum(float(d_sum)) / max(tokens,
                                                                                                            1.0)
        else:
            student = self.model.token_logprobs(batch_t["input_ids"], batch_t["labels"],
                                                chunk_size=self.hparams.loss_chunk_size, **self._model_inputs(batch_t))
            loss_sum = sampled_reverse_kl_loss(student, teacher)
            rkl = self._global_sum(float((student.detach() - teacher).sum())) / max(tokens, 1.0)
        self._step_metrics["train/reverse_kl"] = rkl
        self._log_step(float(loss_sum.detach()) / max(float(sum(lengths)), 1.0))
        return loss_sum * scale / max(tokens, 1.0)

    def _log_step(self, loss: float) -> None:
        self._step_metrics["train/loss"] = loss
        self.log_dict(self._step_metrics, on_step=True, on_epoch=False, rank_zero_only=True)

    def on_before_optimizer_step(self, optimizer) -> None:
        grad_norm = None
        if self.hparams.max_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.hparams.max_grad_norm)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
        metrics = {"train/lr": optimizer.param_groups[0]["lr"]}
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        self.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        return None  # on-policy runs evaluate through the evaluation callbacks
