"""CausalLMModule: full fine-tuning of any HF causal LM (Qwen3 first) on planned SFT batches.

Features:
- the model comes from a hub name, a local path or ``asset:<name>``, or from a model config (tiny test models);
  weights are built in ``configure_model()`` so that FSDP2 sharding applies there;
- ``attn_implementation="auto"``: FlashAttention-2 where ``flash_attn`` imports and CUDA is present, else SDPA
  that runs each packed sequence alone (``sdpa_packed``, ``lightning_modules/packed_attention.py``);
- loss = cross-entropy over supervised tokens, normalised by the supervised tokens of the whole optimizer step
  across all ranks and micro-batches, so the gradient equals that of one big batch of the same tokens;
- the loss never materialises the vocabulary's logits (``loss_implementation="auto"``: torch's chunked
  ``F.linear_cross_entropy`` over the supervised positions, ``lightning_modules/lm_loss.py``), computed inside the
  FSDP2 root module's forward; ``dense`` keeps fp32 logits at the supervised positions only;
- AdamW + cosine schedule with linear warmup stepped per optimizer step; gradient clipping by global norm;
- logs loss, learning rate, gradient norm and global supervised tokens/s;
- FSDP2 (``fully_shard`` per decoder layer, then the root) with a bf16/fp32 mixed-precision policy and per-layer
  activation checkpointing under Lightning's ``ModelParallelStrategy``; a pretrained model is then built on the meta
  device and each rank reads only its shards of the safetensors (``lightning_modules/sharding.py``);
- ``export_hf()``: the one exporter to an HF directory (safetensors, config, tokenizer, generation config);
- logit distillation (``distillation``): loss = alpha x CE + (1 - alpha) x D against a frozen teacher beside the
  student (``lightning_modules/teacher.py``) or its stored top-k logprobs, chunked like the CE
  (``lightning_modules/distill_loss.py``); the teacher is never in a checkpoint, its identity is.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import lightning as L
import torch
import torchmetrics

from lightning_modules import distill_loss, lm_loss, packed_attention
from lightning_modules.distill_loss import DistillationConfig
from lightning_modules.hf_models import build_causal_lm
from skill_distill import assets
from skill_distill.batch_contract import IGNORE_INDEX, MODEL_INPUTS
from skill_distill.io import ConfigError, DataError

AttnImpl = Literal["auto", "flash_attention_2", "sdpa_packed", "sdpa", "eager"]
LossImpl = Literal["auto", "dense", "linear_ce", "liger"]


class LazyWarmupCosine:
    """LR factor of step ``t``: transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` (linear warmup over
    ``ceil(total * warmup_ratio)`` steps, then a half cosine down to ``min_lr_ratio``; the reference scripts' HF
    schedule), built at the first step after 0 because ``total_steps()`` may only be asked then (transformers'
    schedules take the length at construction, which LambdaLR does at once). Steps past the end stay at the floor."""

    def __init__(self, warmup_ratio: float, min_lr_ratio: float, total_steps):
        self.warmup_ratio, self.min_lr_ratio, self.total_steps = warmup_ratio, min_lr_ratio, total_steps
        self._factor = None
        self._end = 0

    def __call__(self, step: int) -> float:
        if step == 0 and self._factor is None:  # LambdaLR evaluates step 0 at construction: the value for any length
            return 0.0 if self.warmup_ratio > 0 else 1.0
        if self._factor is None:
            from transformers import get_cosine_with_min_lr_schedule_with_warmup

            total = max(self.total_steps(), 1)
            warmup = math.ceil(total * self.warmup_ratio)
            # the step the cosine reaches its floor (transformers' max(1,.))
            self._end = warmup + max(total - warmup, 1)
            probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # only its factor function is used
            self._factor = get_cosine_with_min_lr_schedule_with_warmup(
                probe, warmup, total, min_lr_rate=self.min_lr_ratio).lr_lambdas[0]
        return float(self._factor(min(step, self._end)))


def pick_attn_implementation(requested: str) -> str:
    """Resolve ``auto``; reject an explicit choice that cannot work here with one clear line."""
    flash_ok = torch.cuda.is_available()
    if flash_ok:
        try:
            import flash_attn  # noqa: F401 - imported only to see that the build loads
        except Exception:  # noqa: BLE001 - a broken build raises anything
            flash_ok = False
    if requested == "auto":
        return "flash_attention_2" if flash_ok else packed_attention.register()
    if requested == packed_attention.PACKED_SDPA:
        return packed_attention.register()
    if requested == "flash_attention_2" and not flash_ok:
        raise ConfigError("model.attn_implementation=flash_attention_2 needs CUDA and an importable flash_attn "
                         "(pip install '.[gpu]'); use auto or sdpa on this machine")
    if requested not in {"sdpa", "eager", "flash_attention_2"}:
        raise ConfigError(f"model.attn_implementation={requested!r} is unknown; "
                          "use auto, flash_attention_2, sdpa_packed, sdpa or eager")
    return requested


class CausalLMModule(L.LightningModule):
    """Args:
        model: HF hub name, local directory, or ``asset:<name>``; ignored when ``model_config`` is given.
        model_config: keyword arguments of a model config (``model_type`` selects the class), for randomly
            initialised models such as the tiny test Qwen3.
        tokenizer: tokenizer for export (defaults to ``model``; linked from ``data.tokenizer`` by train.py).
        attn_implementation: auto | flash_attention_2 | sdpa_packed | sdpa | eager (auto: flash_attention_2 on
            CUDA with flash_attn installed, else sdpa_packed).
        loss_implementation: auto | dense | linear_ce | liger (``lightning_modules/lm_loss.py``). auto: linear_ce
            (torch's chunked linear cross-entropy, no full logits; CPU and CUDA), dense for models that
            post-process their logits. dense: fp32 logits of every supervised position at once (10 T V bytes).
            liger: Liger-Kernel's fused kernel (CUDA).
        loss_chunk_size: supervised positions per chunk of linear_ce (one chunk's fp32 logits: 4 x this x vocab
            bytes); None: hidden size / 4, so a chunk's logits are a quarter of the output embedding's gradient
            (``lm_loss.default_chunk_size``).
        model_dtype: dtype of the weights held by the optimizer. float32 keeps fp32 master weights (use
            ``trainer.precision: bf16-mixed`` or the FSDP2 mixed-precision policy for bf16 compute).
        gradient_checkpointing: recompute activations per decoder layer in backward.
        learning_rate: peak learning rate (paper: 1e-5).
        weight_decay: AdamW weight decay (reference: 0).
        betas: AdamW betas (reference: 0.9, 0.999).
        eps: AdamW epsilon.
        optimizer_implementation: AdamW's kernels (torch's ``fused`` / ``foreach`` / for-loop): fused updates
            every parameter in one kernel per step (torchtitan's and HF Trainer's default too); for-loop is torch's
            reference and its default on CPU, 8.2x slower there (benchmarks/bench_optimizer.py).
        warmup_ratio: share of optimizer steps with linear warmup (paper: 0.1).
        min_lr_ratio: floor of the cosine schedule as a share of the peak (paper: 0).
        max_grad_norm: clip the global gradient norm to this (paper: 1.0); None disables clipping.
        fsdp_mixed_precision: under ModelParallelStrategy, bf16 parameters for compute, fp32 gradient reduction.
        fsdp_reshard_after_forward: free each layer's gathered parameters after forward (less memory, one more
            all-gather in backward).
        compile: ``torch.compile`` each decoder layer.
        distillation: logit distillation against a teacher (``distill_loss.DistillationConfig``); None: plain SFT.
    """

    def __init__(
        self,
        model: str | None = None,
        model_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        attn_implementation: AttnImpl = "auto",
        loss_implementation: LossImpl = "auto",
        loss_chunk_size: int | None = None,
        model_dtype: Literal["float32", "bfloat16"] = "float32",
        gradient_checkpointing: bool = False,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        optimizer_implementation: Literal["fused", "foreach", "for-loop"] = "fused",
        warmup_ratio: float = 0.1,
        min_lr_ratio: float = 0.0,
        max_grad_norm: float | None = 1.0,
        fsdp_mixed_precision: bool = True,
        fsdp_reshard_after_forward: bool = True,
        compile: bool = False,
        distillation: DistillationConfig | None = None,
    ):
        super().__init__()
        if model is None and model_config is None:
            raise ConfigError("set model.model (hub name, path or asset:...) or model.model_config")
        if not 0 <= warmup_ratio < 1:
            raise ConfigError(f"model.warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if learning_rate <= 0:
            raise ConfigError(f"model.learning_rate must be > 0, got {learning_rate}")
        if loss_chunk_size is not None and loss_chunk_size < 1:
            raise ConfigError(f"model.loss_chunk_size must be >= 1, got {loss_chunk_size}")
        self.attn_implementation = pick_attn_implementation(attn_implementation)
        # resolved again against the model's config once it is built (configure_model)
        self.loss_implementation = lm_loss.pick_loss_implementation(loss_implementation)
        self.save_hyperparameters()
        self.model_name = model
        self.model_config = model_config
        self.tokenizer_name = tokenizer or model
        self.model = None
        self.distillation = distillation
        self.teacher = None  # a FrozenTeacher: a plain object, so never a submodule, never in a state_dict
        self._teacher_store = None
        if distillation is not None and distillation.teacher is not None:
            from lightning_modules.teacher import check_same_vocabulary

            check_same_vocabulary(distillation.teacher, model, model_config, tokenizer)
        self.val_loss = torchmetrics.MeanMetric()
        self._step_kd = 0.0
        self._step_objective = 0.0
        self._step_ce = 0.0
        self._step_tokens = 0
        self._step_start: float | None = None

    # ---- model --------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the model (and the teacher). Under ModelParallelStrategy (a device mesh) they are FSDP2-sharded; a
        pretrained checkpoint is then loaded shard by shard without ever materialising the full model on a rank."""
        if self.model is not None:
            return
        mesh = self.device_mesh  # set by ModelParallelStrategy before this hook
        self.model = build_causal_lm(
            self.model_name, self.model_config, self.attn_implementation, getattr(torch, self.hparams.model_dtype),
            device_mesh=mesh, device=self._init_device(), mixed_precision=self.hparams.fsdp_mixed_precision,
            reshard_after_forward=self.hparams.fsdp_reshard_after_forward, compile_layers=self.hparams.compile,
            gradient_checkpointing=self.hparams.gradient_checkpointing)
        self._resolve_loss()
        cfg = self.distillation
        if cfg is None:
            return
        distill_loss.attach(self.model)
        if cfg.teacher is not None:
            from lightning_modules.teacher import FrozenTeacher

            self.teacher = FrozenTeacher.build(cfg.teacher, self.attn_implementation, getattr(torch, cfg.teacher_dtype),
                                               device_mesh=mesh, device=self._init_device())
        else:
            from skill_distill.teacher_logprobs import TeacherLogprobStore

            self._teacher_store = TeacherLogprobStore(cfg.teacher_logprobs)

    def _resolve_loss(self) -> None:
        self.loss_implementation = lm_loss.pick_loss_implementation(self.hparams.loss_implementation,
                                                                    self.model.config)

    def _init_device(self) -> torch.device:
        """Where this rank's shards are allocated: the strategy's device (cuda:<local rank> on GPUs)."""
        if self._trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    # ---- loss ---------------------------------------------------------------------------------------
    def forward_ce(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of token cross-entropies over supervised positions, and the number of such positions.

        ``supervised_ce`` is a forward of the (FSDP2 root) model itself, see ``lightning_modules/lm_loss.py``."""
        kwargs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        return self.model.supervised_ce(batch["input_ids"], batch["labels"], implementation=self.loss_implementation,
                                        chunk_size=self.hparams.loss_chunk_size, **kwargs)

    def teacher_identity(self) -> dict | None:
        """What a checkpoint records of the teacher (name, config hash; a store: its teacher's), None without one."""
        if self.teacher is not None:
            return self.teacher.identity
        if self._teacher_store is not None:
            return self._teacher_store.identity
        return None

    def _stored_rows(self, example_id: str, targets: torch.Tensor):
        """The stored top-k of one example, whose stored targets must be ``targets`` (this run's tokens)."""
        stored = self._teacher_store.get(example_id)
        if stored.targets.shape != targets.shape or not torch.equal(stored.targets.to(targets), targets):
            raise DataError(f"{self._teacher_store.directory}: example {example_id!r}: the stored teacher logprobs are "
                            "for other tokens than this run's tokenisation of it (another tokenizer, max_length, "
                            "prompt or skill format?); rerun python -m skill_distill teacher-logprobs with the "
                            "training run's data settings")
        return stored

    def on_train_start(self) -> None:
        """Stored teacher logprobs: every training example must be stored, for this run's tokens (one line, before
        the first step, naming the first example that is not)."""
        examples = getattr(self.trainer.datamodule, "train_examples", None) if self._trainer is not None else None
        if self._teacher_store is None or not examples:
            return
        for e in examples:
            self._stored_rows(e.example_id, torch.tensor([t for t in e.labels if t != IGNORE_INDEX]))

    def _stored_teacher(self, batch: dict) -> distill_loss.TeacherTopK:
        """The stored top-k rows of the batch's supervised positions, example by example in batch order."""
        labels = batch["labels"]
        if "cu_seq_lens_q" in batch:  # packed: one row, sequences at the cumulative lengths
            bounds = batch["cu_seq_lens_q"].tolist()
            per_example = [labels[0, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        else:
            per_example = list(labels)
        rows = [self._stored_rows(example_id, example_labels[example_labels != IGNORE_INDEX])
                for example_id, example_labels in zip(batch["example_ids"], per_example, strict=True)]
        return distill_loss.TeacherTopK(torch.cat([r.ids for r in rows]).to(labels.device),
                                        torch.cat([r.logprobs for r in rows]).to(labels.device))

    def forward_kd(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss sum, CE sum, divergence sum, supervised tokens) of the distillation objective on ``batch``."""
        kwargs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        if self.teacher is not None:
            supervised = batch["labels"] != IGNORE_INDEX
            hidden = self.teacher.final_hidden(batch["input_ids"], **kwargs)[supervised]
            teacher = distill_loss.TeacherLogits(hidden, self.teacher.output_weight, self.teacher.output_bias)
        else:
            teacher = self._stored_teacher(batch)
        chunk = self.distillation.chunk_size or lm_loss.default_chunk_size(self.model.config.hidden_size)
        return self.model.supervised_kd(batch["input_ids"], batch["labels"], teacher, self.distillation, chunk,
                                        **kwargs)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        identity = self.teacher_identity()
        if identity is not None:
            checkpoint["teacher_identity"] = identity

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved, current = checkpoint.get("teacher_identity"), self.teacher_identity()
        if saved is not None and current is not None and saved.get("config_sha256") != current.get("config_sha256"):
            raise ConfigError(f"the teacher {current['name']} (config sha256 {current['config_sha256'][:12]}) is not "
                              f"the run's teacher {saved.get('name')} (config sha256 "
                              f"{str(saved.get('config_sha256'))[:12]}): a resumed run keeps its teacher; start a "
                              "new run with --trainer.default_root_dir <another directory>")

    def _data_parallel_size(self) -> int:
        mesh = getattr(self, "device_mesh", None)
        if mesh is not None and "data_parallel" in (mesh.mesh_dim_names or ()):
            return mesh["data_parallel"].size()
        return self.trainer.world_size if self._trainer is not None else 1

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self._step_start is None:
            self._step_start = time.perf_counter()
        if self.distillation is None:
            objective, n = self.forward_ce(batch)
            ce = objective
        else:
            objective, ce, kd, n = self.forward_kd(batch)
            self._step_kd += kd.item()
        step_tokens = batch["step_num_tokens"].clamp(min=1).to(objective.dtype)
        self._step_ce += ce.detach().item()
        self._step_objective += objective.detach().item()
        self._step_tokens += int(n)
        # Lightning divides by the accumulation count and DDP/FSDP average over ranks; undo both so the
        # step's gradient is the gradient of (sum of the loss over all the step's tokens) / (their number).
        scale = self.trainer.accumulate_grad_batches * self._data_parallel_size()
        return objective * scale / step_tokens

    def on_before_optimizer_step(self, optimizer) -> None:
        grad_norm = None
        if self.hparams.max_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.hparams.max_grad_norm)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
                grad_norm = grad_norm.full_tensor()
        totals = torch.tensor([self._step_objective, self._step_ce, self._step_kd, float(self._step_tokens)],
                              dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        objective_sum, ce_sum, kd_sum, tokens = totals.tolist()
        elapsed = time.perf_counter() - (self._step_start or time.perf_counter())
        metrics = {"train/loss": objective_sum / max(tokens, 1.0), "train/lr": optimizer.param_groups[0]["lr"],
                   "train/supervised_tokens": tokens, "train/tokens_per_s": tokens / max(elapsed, 1e-9)}
        if self.distillation is not None:  # train/loss is then the distillation objective
            metrics["train/ce"] = ce_sum / max(tokens, 1.0)
            metrics[f"train/{self.distillation.divergence}"] = kd_sum / max(tokens, 1.0)
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        self.log_dict(metrics, prog_bar=False, on_step=True, on_epoch=False, rank_zero_only=True)
        self.log("loss", metrics["train/loss"], prog_bar=True, on_step=True, on_epoch=False, logger=False,
                 rank_zero_only=True)
        self._step_ce, self._step_objective, self._step_kd, self._step_tokens, self._step_start = 0.0, 0.0, 0.0, 0, None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        ce, n = self.forward_ce(batch)
        if n > 0:
            self.val_loss.update(ce / n, weight=n)

    def on_validation_epoch_end(self) -> None:
        if self.val_loss.update_count:
            self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=False)
        self.val_loss.reset()

    # ---- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        kernels = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=hp.learning_rate, betas=tuple(hp.betas),
                                      eps=hp.eps, weight_decay=hp.weight_decay,
                                      **kernels[hp.optimizer_implementation])
        # The schedule's length is read lazily, at the first real step: asking the trainer for it here
        # (estimated_stepping_batches) would build the train dataloader before a checkpoint's data position is
        # restored, and Lightning then never restores it (a resumed run would restart the epoch at sample 0).
        schedule = LazyWarmupCosine(hp.warmup_ratio, hp.min_lr_ratio,
                                    lambda: int(self.trainer.estimated_stepping_batches))

        def lr_lambda(step: int) -> float:  # a plain function: LambdaLR would pickle a callable object's __dict__
            return schedule(step)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ---- export -------------------------------------------------------------------------------------
    def export_hf(self, out_dir: str, dtype: str | None = None) -> str:
        """Write the current weights as an HF directory (a collective: call on every rank); ``dtype`` casts
        floating weights on the way out (e.g. "bfloat16")."""
        from skill_distill.export import export_hf_model

        return export_hf_model(self.model, assets.resolve(self.tokenizer_name) if self.tokenizer_name else None,
                               out_dir, is_global_zero=self.trainer.is_global_zero if self._trainer else True,
                               barrier=self.trainer.strategy.barrier if self._trainer else None, dtype=dtype)
