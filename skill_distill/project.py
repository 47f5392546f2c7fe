"""One project config for a user's own data, and the ``run`` command that runs the whole chain from it:
``python -m skill_distill run --config project.yaml [--until STAGE]`` (docs/OWN_DATA.md).

The config names each shared thing once: the data (path or HF dataset, field map, kept fields, label field), the
tree (a file or asset, or built from the label field), the attributor (or none: labels), the student, the
evaluation sets and the run directory. Each stage then has a section with its own further settings, the keys of
that stage's own config file (``python -m skill_distill <stage> --help``); the runner fills in what the project
names once (inputs, outputs, models) and parses every section with the stage's own parser before anything runs.

The chain is pool -> attribute -> profile -> select-report -> fit -> evaluate, each in ``<run_dir>/<stage>/``.
Every stage has a key: sha256 of its parsed settings, of the files it reads from outside the run directory, and
of the key of the stage before it. ``<run_dir>/run_state.json`` records each stage's key and whether it finished:

- a finished stage whose key is unchanged is skipped (and says so);
- a stage that started under the same key and did not finish is resumed (every stage is resumable);
- a stage whose key changed starts afresh (its directory is cleared), and so does every stage after it, since
  their keys contain its key.

``fit`` runs ``train.py fit`` as a child process (Lightning stays out of ``skill_distill``), which dies with this
process (``skill_distill.process_lifetime``) and resumes from its last checkpoint when rerun.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from skill_distill.corpus import CorpusFields
from skill_distill.formatting import DEFAULT_INSTRUCTION
from skill_distill.generation.factory import BackendConfig
from skill_distill.io import ConfigError, OutputError, read_json, write_json
from skill_distill.rows import is_local

STAGE_NAMES = ("pool", "attribute", "profile", "select-report", "fit", "evaluate")
Stage = Literal["pool", "attribute", "profile", "select-report", "fit", "evaluate"]
STATE_FILE = "run_state.json"
PROMPT_KEYS = ("instruction", "enable_thinking")
"""Prompt settings given once, under ``student``: a stage section that sets one is refused."""
REPO = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3


@dataclass
class ProjectData:
    """The corpus, read once by the pool stage; every later stage reads the pool."""

    corpus: str
    """.jsonl/.json/.parquet file, folder or glob of Parquet files, ``asset:`` name, or HF dataset name."""
    split: str = "train"
    """Split of an HF dataset."""
    fields: CorpusFields = field(default_factory=CorpusFields)
    """Which source field holds id, problem, trace, answer (or ``messages`` for chat rows)."""
    keep_fields: list[str] = field(default_factory=list)
    """Source fields carried into the pool rows (the label field is added to them)."""
    label_field: str | None = None
    """A label column (e.g. ``category``): attribution reads it instead of asking an LLM (when no ``attributor``
    is set), and the held-out evaluation reports per label."""
    label_map: dict[str, Any] | None = None
    """Label value -> chain of ``tree.path`` (a list of names or ``"A->b"``); not needed with ``tree.from_labels``."""

    def __post_init__(self):
        if not str(self.corpus).strip():
            raise ConfigError("data.corpus is empty; name your corpus file, folder, glob or HF dataset")
        if self.label_field and self.label_field not in self.keep_fields:
            self.keep_fields = [*self.keep_fields, self.label_field]


@dataclass
class ProjectTree:
    """The skill tree: a file or asset, or built from the label column."""

    path: str | None = None
    """Tree JSON (``{"name", "children"}``) or asset (``asset:tree/skill_mix``)."""
    from_labels: bool = False
    """Build the tree from the distinct values of ``data.label_field`` (each value a topic, ``"A->b"`` a chain)."""
    duplicate_siblings: Literal["merge", "error"] = "merge"
    """Siblings of ``path`` repeating a name: merge them (the published tree needs it) or refuse the tree."""

    def __post_init__(self):
        if bool(self.path) == self.from_labels:
            raise ConfigError("tree: set exactly one of tree.path (a tree file or asset) and tree.from_labels: true")


@dataclass
class ProjectStudent:
    """The model that is profiled, trained and evaluated."""

    model: str
    """HF folder, hub name or ``asset:`` name (e.g. ``asset:smollm2-135m-instruct``)."""
    tokenizer: str | None = None
    """Its tokenizer when it differs from ``model``."""
    instruction: str = DEFAULT_INSTRUCTION
    """The user turn's instruction: the profile, training (and its evaluations) and the evaluate stage all ask with
    it, so the profile measures what evaluation grades (issue 27)."""
    enable_thinking: bool = True
    """Chat-template thinking mode (Qwen3) of the profile, training and evaluation prompts."""

    def __post_init__(self):
        if not str(self.model).strip():
            raise ConfigError("student.model is empty; name the student model (HF folder, hub name or asset:)")
        if not str(self.instruction).strip():
            raise ConfigError("student.instruction is empty; give the instruction line of the user turn")


@dataclass
class ProjectEvaluation:
    """What the evaluate stage grades the trained student on."""

    heldout: bool = True
    """The pool's held-out slice (``pool.draw.heldout`` problems), per label when ``data.label_field`` is set."""
    benchmarks: list[str] = field(default_factory=list)
    """Registered benchmark names as well (aime24, aime25, amc23, math500, math-l5, olympiadbench)."""

    def __post_init__(self):
        from skill_distill.eval_sets import REGISTRY

        unknown = [b for b in self.benchmarks if b not in REGISTRY]
        if unknown:
            raise ConfigError(f"evaluation.benchmarks: unknown {unknown}; registered: {sorted(REGISTRY)}")


@dataclass
class StageOutcome:
    name: str
    status: str
    """``skipped`` (unchanged), ``ran``, ``resumed`` or ``rerun`` (its key changed)."""
    seconds: float = 0.0
    tree_peak_gb: float | None = None
    """Peak summed resident memory of the ``run`` process and all its descendants while the stage ran (GiB)."""


MEMORY_SAMPLE_S = 1.0
"""How often ``run`` samples its process tree's resident memory (``TreeMemory``)."""


def run_project(
    run_dir: str,
    data: ProjectData,
    tree: ProjectTree,
    student: ProjectStudent,
    attributor: BackendConfig | None = None,
    evaluation: ProjectEvaluation | None = None,
    pool: dict[str, Any] | None = None,
    attribute: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
    select: dict[str, Any] | None = None,
    fit: dict[str, Any] | None = None,
    evaluate: dict[str, Any] | None = None,
    until: Stage | None = None,
    plan: bool = False,
) -> list[StageOutcome]:
    """Run the chain pool -> attribute -> profile -> select-report -> fit -> evaluate from one project config,
    skipping every stage whose settings and inputs are unchanged (docs/OWN_DATA.md).

    Args:
        run_dir: Every stage writes into ``<run_dir>/<stage>/``; ``run_state.json`` records what is done.
        data: The corpus, its field map, kept fields and label column.
        tree: The skill tree (a file, an asset, or built from ``data.label_field``).
        student: The student model (profiled, trained, evaluated).
        attributor: The attributor LLM backend (``class_path: VLLMConfig``/``OpenAIConfig``/``HFConfig`` and
            ``init_args``); None attributes from ``data.label_field``.
        evaluation: The evaluation sets (None: the held-out slice only).
        pool: Further settings of the pool stage (``draw``, ``filters``, ``tokens``, ``decontamination``,
            ``source.append_boxed_answer``/``limit``/``batch_size``).
        attribute: Further settings of the attribute stage (``sampling``, ``guided``, ``max_input_chars``, ``limit``,
            ``max_depth``, ...).
        profile: Further settings of the profile stage (``backend`` kind and engine settings: its model is the
            student; ``sampling``, ``limit``, ``answer_fallback``, ...).
        select: Settings of the selection (``selection: {strategy, budget, ...}``): the select-report stage reports
            it and fit trains on it.
        fit: ``config`` (the base training config, default ``configs/quickstart.yaml``) and ``overrides`` (a nested
            dict merged over it, e.g. ``{trainer: {max_epochs: 1}}``).
        evaluate: Further settings of the evaluate stage (``backend``, ``sampling``, ``grading``, ...).
        until: Stop after this stage.
        plan: Only parse every section and print what each stage would do (run, resume, rerun or skip); nothing
            runs and nothing is written (scripts/slurm/pipeline.sh checks a project this way before submitting).
    """
    return project_run(run_dir, data, tree, student, attributor, evaluation, pool, attribute, profile, select, fit,
                       evaluate).run(until, plan)


def project_run(run_dir: str, data: ProjectData, tree: ProjectTree, student: ProjectStudent,
                attributor: BackendConfig | None = None, evaluation: ProjectEvaluation | None = None,
                pool: dict | None = None, attribute: dict | None = None, profile: dict | None = None,
                select: dict | None = None, fit: dict | None = None, evaluate: dict | None = None) -> ProjectRun:
    """The chain of a parsed project config (``run_project``'s arguments without ``until``), checked, not run."""
    sections = {"pool": pool or {}, "attribute": attribute or {}, "profile": profile or {},
                "select-report": select or {}, "fit": fit or {}, "evaluate": evaluate or {}}
    sections = {name: _as_specs(section) for name, section in sections.items()}
    return ProjectRun(Path(run_dir), data, tree, student, _as_specs(attributor), evaluation or ProjectEvaluation(),
                      sections)


class ProjectRun:
    """The chain over one run directory: each stage's settings built from the project, keyed, run or skipped."""

    def __init__(self, root: Path, data: ProjectData, tree: ProjectTree, student: ProjectStudent,
                 attributor: dict | None, evaluation: ProjectEvaluation, sections: dict[str, dict]):
        self.root, self.data, self.tree, self.student = root, data, tree, student
        self.attributor, self.evaluation, self.sections = attributor, evaluation, sections
        if attributor is None and not data.label_field:
            raise ConfigError("no attributor: set attributor (an LLM backend) or data.label_field (a label column)")
        if tree.from_labels and not data.label_field:
            raise ConfigError("tree.from_labels builds the tree from data.label_field: set data.label_field")
        if tree.from_labels and attributor is not None:
            raise ConfigError("tree.from_labels: the tree is the labels, so attribution reads them; drop attributor")
        data_overrides = ((sections["fit"].get("overrides") or {}).get("data") or {})
        for where, section in (("profile", sections["profile"]), ("evaluate", sections["evaluate"]),
                               ("fit.overrides.data", data_overrides)):
            for key in PROMPT_KEYS:
                if key in section:
                    raise ConfigError(f"{where}.{key}: the prompt is set once, as student.{key} (the profile, fit "
                                      "and evaluate stages all use it); move it there")
        unknown = set(sections["fit"]) - {"config", "overrides"}
        if unknown:
            raise ConfigError(f"fit: unknown keys {sorted(unknown)}; fit takes config (a training config) and "
                              "overrides (a nested dict merged over it)")
        self.state_path = root / STATE_FILE
        self.state: dict = read_json(self.state_path, "run state") if self.state_path.is_file() else {"stages": {}}

    # ---- paths -----------------------------------------------------------------------------------------------
    def dir(self, stage: str) -> Path:
        """``<run_dir>/<stage>`` (select-report's is ``select``, its section's name)."""
        return self.root / ("select" if stage == "select-report" else stage)

    @property
    def pool_file(self) -> Path:
        return self.dir("pool") / "pool.jsonl"

    @property
    def heldout_file(self) -> Path:
        return self.dir("pool") / "heldout.jsonl"

    @property
    def tree_file(self) -> str:
        """The tree the stages after attribution read: the one attribution built or cut, else the configured."""
        used = self.dir("attribute") / "skill_tree_used.json"
        return str(used) if used.is_file() else str(self.tree.path)

    @property
    def final_model(self) -> Path:
        from skill_distill.run_layout import RunLayout

        return RunLayout(self.dir("fit")).final_export

    # ---- each stage's settings (the keys of its own config file) ----------------------------------------------
    def stage_config(self, stage: str) -> dict:
        own = json.loads(json.dumps(self.sections[stage]))  # a deep copy
        if stage == "pool":
            source = {**own.pop("source", {}), "corpus": self.data.corpus, "split": self.data.split,
                      "fields": asdict(self.data.fields), "keep_fields": self.data.keep_fields}
            return {**own, "source": source, "output_dir": str(self.dir("pool"))}
        if stage == "attribute":
            cfg = {**own, "pool": str(self.pool_file), "output_dir": str(self.dir("attribute")),
                   "tree": self.tree.path, "tree_from_labels": self.tree.from_labels,
                   "duplicate_siblings": self.tree.duplicate_siblings}
            if self.attributor is not None:
                return {**cfg, "backend": self.attributor}
            return {**cfg, "label_field": self.data.label_field, "label_map": self.data.label_map}
        if stage == "profile":
            backend = own.pop("backend", {"class_path": "VLLMConfig"})
            backend = {**backend, "init_args": {**backend.get("init_args", {}), **self._student_args()}}
            return {**own, "pool": str(self.pool_file), "tree": self.tree_file, "backend": backend,
                    "attribution": str(self.dir("attribute") / "attribution.jsonl"),
                    "output_dir": str(self.dir("profile")), **self.prompt}
        if stage == "select-report":
            return {**own, "pool": str(self.pool_file), "tree": self.tree_file,
                    "attribution": str(self.dir("attribute") / "attribution.jsonl"),
                    "profile": str(self.dir("profile") / "profile.json"),
                    "verdicts": str(self.dir("profile") / "verdicts.jsonl"), "output_dir": str(self.dir("select"))}
        if stage == "fit":
            return {"config": own.get("config", str(REPO / "configs" / "quickstart.yaml")),
                    "settings": _merge(self._fit_settings(), own.get("overrides") or {})}
        if stage == "evaluate":
            backend = own.pop("backend", {"class_path": "VLLMConfig"})
            return {**own, "model": str(self.final_model), "output_dir": str(self.dir("evaluate")),
                    "tree": self.tree_file, "benchmarks": self._benchmarks(), "backend": backend, **self.prompt,
                    **({"tokenizer": self.student.tokenizer} if self.student.tokenizer else {})}
        raise ValueError(stage)

    @property
    def prompt(self) -> dict:
        """The student's prompt settings, the same in the profile, fit (its data, so its evaluations too) and
        evaluate stages."""
        return {key: getattr(self.student, key) for key in PROMPT_KEYS}

    def _student_args(self) -> dict:
        return {"model": self.student.model, **({"tokenizer": self.student.tokenizer} if self.student.tokenizer
                                                 else {})}

    def _fit_settings(self) -> dict:
        heldout = self.heldout_file if self.heldout_file.is_file() and self.heldout_file.stat().st_size else None
        data = {"corpus": str(self.pool_file), "tokenizer": self.student.tokenizer or self.student.model,
                "tree": self.tree_file, "attribution": str(self.dir("attribute") / "attribution.jsonl"),
                "profile": str(self.dir("profile") / "profile.json"),
                "val_corpus": str(heldout) if heldout else None, **self.prompt}
        if "selection" in self.sections["select-report"]:
            data["selection"] = self.sections["select-report"]["selection"]
        return {"trainer": {"default_root_dir": str(self.dir("fit"))}, "model": {"model": self.student.model},
                "data": data}

    def _benchmarks(self) -> list:
        sets: list = list(self.evaluation.benchmarks)
        if self.evaluation.heldout:
            spec: dict = {"name": "heldout", "path": str(self.heldout_file), "id_field": "id"}
            if self.data.label_field:
                from skill_distill.skill_tree import SkillTree, format_chain

                label_map = self.data.label_map
                if self.tree.from_labels and Path(self.tree_file).is_file():  # identity: each label its own chain
                    label_map = {format_chain(c): list(c) for c in SkillTree.load(self.tree_file).leaf_chains}
                spec["skills"] = {"label_field": self.data.label_field, "label_map": label_map, "on_unknown": "drop"}
            sets.insert(0, spec)
        return sets

    # ---- parsing, keys, state -------------------------------------------------------------------------------
    def parse(self, stage: str) -> tuple[Callable | None, Any, str]:
        """The stage's function, its arguments parsed by the stage's own parser, and their canonical text (what
        the key hashes). A bad key or value is a ConfigError naming the project section."""
        cfg = self.stage_config(stage)
        if stage == "fit":
            return None, cfg, json.dumps(cfg, sort_keys=True)
        from jsonargparse import ArgumentParser

        fn = _stage_function(stage)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_function_arguments(fn, as_positional=False)
        section = "select" if stage == "select-report" else stage
        try:
            parsed = parser.parse_object(cfg)
            init = parser.instantiate(parsed)
        except ConfigError as e:
            raise ConfigError(f"project section {section!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - jsonargparse reports a bad key or type as several exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"project section {section!r}: {first}; see python -m skill_distill {stage} --help") \
                from None
        return fn, init, parser.dump(parsed, skip_validation=True)

    def key(self, stage: str, text: str, previous: str) -> str:
        blob = {"stage": stage, "settings": text, "previous": previous, "inputs": self._outside_inputs(stage)}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]

    def _outside_inputs(self, stage: str) -> dict:
        """Content hashes of the files a stage reads from outside the run directory."""
        files = {"pool": [self.data.corpus], "attribute": [self.tree.path],
                 "fit": [self.sections["fit"].get("config", str(REPO / "configs" / "quickstart.yaml"))]}
        return {str(f): _fingerprint(str(f)) for f in files.get(stage, []) if f}

    def _save_state(self) -> None:
        write_json(self.state_path, self.state)

    # ---- the chain ------------------------------------------------------------------------------------------
    def run(self, until: str | None = None, plan: bool = False) -> list[StageOutcome]:
        """Run (or with ``plan``, only report) the chain up to ``until``."""
        from skill_distill.console import summary

        if plan:
            return self._plan(until)
        self.root.mkdir(parents=True, exist_ok=True)
        stop = STAGE_NAMES.index(until) if until else len(STAGE_NAMES) - 1
        for stage in STAGE_NAMES[:stop + 1]:  # every section checked by its stage's parser before anything runs
            self.parse(stage)
        outcomes: list[StageOutcome] = []
        with TreeMemory(MEMORY_SAMPLE_S) as memory:
            self._run_stages(STAGE_NAMES[:stop + 1], outcomes, memory)
        ran = [o for o in outcomes if o.tree_peak_gb is not None]
        top = max(ran, key=lambda o: o.tree_peak_gb, default=None)
        summary("run", [*(f"{o.name}: {o.status}" + (f" in {o.seconds:.0f} s, peak memory {o.tree_peak_gb:.1f} GB"
                                                     if o.status != "skipped" else "") for o in outcomes),
                        *(f"warning: {w}" for w in self.warnings()),
                        f"peak memory: {memory.peak / GIB:.1f} GB, this process and all its descendants together"
                        + (f" (during {top.name})" if top else "")
                        + f", sampled every {MEMORY_SAMPLE_S:g} s; the largest single process: {peak_rss_gb():.1f} GB",
                        f"state: {self.state_path}"])
        return outcomes

    def _run_stages(self, stages: tuple[str, ...], outcomes: list[StageOutcome], memory: TreeMemory) -> None:
        from skill_distill.console import progress

        previous = ""
        for stage in stages:
            fn, args, text = self.parse(stage)
            key = self.key(stage, text, previous)
            previous = key
            saved = self.state["stages"].get(stage, {})
            if saved.get("key") == key and saved.get("done"):
                progress("run", f"{stage}: unchanged (key {key}), skipped")
                outcomes.append(StageOutcome(stage, "skipped"))
                continue
            if saved.get("key") == key:
                status = "resumed"
            else:
                status = "rerun" if saved else "ran"
                if self.dir(stage).exists():
                    if not saved:  # never delete what this run directory's state does not record as its own
                        raise OutputError(f"{self.dir(stage)} exists but {self.state_path} does not record it; "
                                          "choose a new run_dir, or move that folder away")
                    shutil.rmtree(self.dir(stage))  # other settings or inputs: the old outputs are not this stage's
            progress("run", f"{stage}: {'resuming' if status == 'resumed' else 'running'} (key {key})"
                     + (", its settings or inputs changed" if status == "rerun" else ""))
            self.state["stages"][stage] = {"key": key, "done": False}
            for later in STAGE_NAMES[STAGE_NAMES.index(stage) + 1:]:
                if later in self.state["stages"]:  # they depend on this one: rerun, even if this run stops here
                    self.state["stages"][later]["done"] = False
            self._save_state()
            start = time.perf_counter()
            memory.mark()
            if stage == "fit":
                self._run_fit(args)
            else:
                fn(**args.as_dict())
            seconds = time.perf_counter() - start
            peak = memory.mark() / GIB
            self.state["stages"][stage] = {"key": key, "done": True, "seconds": round(seconds, 1),
                                           "peak_memory_gb": round(peak, 2)}
            self._save_state()
            outcomes.append(StageOutcome(stage, status, seconds, peak))

    def _plan(self, until: str | None) -> list[StageOutcome]:
        """What ``run`` would do per stage (``would skip``/``would resume``/``would run``/``would rerun``), parsed and
        keyed as ``run`` does, without running or writing anything."""
        from skill_distill.console import progress

        stages = STAGE_NAMES[:STAGE_NAMES.index(until) + 1] if until else STAGE_NAMES
        outcomes, previous, changed = [], "", False
        for stage in stages:
            _, _, text = self.parse(stage)
            previous = key = self.key(stage, text, previous)
            saved = self.state["stages"].get(stage, {})
            if saved.get("key") == key and saved.get("done") and not changed:
                status = "would skip"
            else:
                status = ("would resume" if saved.get("key") == key else "would rerun" if saved else "would run")
                changed = True  # the stages after it run too (run marks them unfinished)
            progress("run", f"plan: {stage}: {status} (key {key})")
            outcomes.append(StageOutcome(stage, status))
        return outcomes

    def _run_fit(self, args: dict) -> None:
        import yaml

        cfg = self.dir("fit") / "project_fit.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(yaml.safe_dump(args["settings"], sort_keys=False))
        cmd = [sys.executable, "-c", _FIT_BOOT, str(os.getpid()), str(REPO), str(REPO / "train.py"), "fit",
               "--config", args["config"], "--config", str(cfg), "--ckpt_path", "last"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        code = subprocess.call(cmd, env=env)
        if code != 0:
            raise OutputError(f"fit: train.py exited with code {code} (its log is above); fix the cause and rerun "
                              "the same run command: fit resumes from its last checkpoint")

    def warnings(self) -> list[str]:
        """The stages' warnings, from their stats files."""
        out = []
        for path in (self.dir("pool") / "pool_stats.json", self.dir("attribute") / "attribution_stats.json"):
            if path.is_file():
                out += read_json(path, "stage stats").get("warnings", [])
        if self.dir("profile").exists():
            from skill_distill.profile import extraction_warning

            fallback = self.sections["profile"].get("answer_fallback", "none")
            out += [w for w in [extraction_warning(fallback)] if w]
        return out


_FIT_BOOT = (
    "import os, runpy, sys\n"
    "from skill_distill.process_lifetime import die_with_parent\n"
    "die_with_parent(kill_group=True)\n"  # train.py and its own children die with the run command
    # the guard is armed now; a parent that died before that left this process to init: go too
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os.killpg(os.getpgrp(), 9)\n"
    "sys.path.insert(0, sys.argv[2])\n"
    "sys.argv = sys.argv[3:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


SECTIONS = ("pool", "attribute", "profile", "select", "fit", "evaluate")
"""The project config's free-form sections: each holds its stage's own settings."""


def nested_section_overrides(argv: list[str]) -> list[str]:
    """The ``run`` command line with every ``--<section>.<key>...=<value>`` merged into that section as the
    ``--config`` files give it, and passed on as one ``--<section>=<the whole section>``.

    jsonargparse (4.53) sets a nested key of a free-form dict section by replacing the dict above it:
    ``--pool.draw.size=24`` dropped the config's ``draw.heldout`` and ``draw.seed``, silently, and kept ``"24"`` a
    string. Here each value is read as YAML (``24`` an int, ``null``, ``[a, b]``) and set inside the section. Other
    arguments pass unchanged; config files that cannot be read are left to the parser's own error."""
    import yaml

    configs: list[str] = []
    overrides: dict[str, list[tuple[list[str], Any]]] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg, used = argv[i], 1
        key = value = None
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif arg.startswith("--") and i + 1 < len(argv):
            key, value, used = arg[2:], argv[i + 1], 2
        parts = (key or "").split(".")
        if key == "config":
            configs.append(value)
        if len(parts) >= 2 and parts[0] in SECTIONS and all(parts):
            overrides.setdefault(parts[0], []).append((parts[1:], yaml.safe_load(value)))
        else:
            rest += argv[i:i + used]
        i += used
    if not overrides:
        return argv
    sections: dict[str, Any] = {}
    for path in configs:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            return argv  # the parser names the unreadable file
        for name in SECTIONS:
            if isinstance(loaded, dict) and name in loaded:
                sections[name] = loaded[name]  # a later config's section replaces an earlier one's, as in the parser
    for name, items in overrides.items():
        section = json.loads(json.dumps(sections.get(name) or {}))  # a deep copy
        for keys, value in items:
            node = section
            for k in keys[:-1]:
                if not isinstance(node.get(k), dict):
                    node[k] = {}
                node = node[k]
            node[keys[-1]] = value
        rest.append(f"--{name}={json.dumps(section)}")
    return rest


prepare_argv = nested_section_overrides  # python -m skill_distill applies a stage module's prepare_argv first


def _stage_function(stage: str) -> Callable:
    import importlib

    from skill_distill.__main__ import STAGES

    module, func, _ = STAGES[stage]
    return getattr(importlib.import_module(module), func)


def _as_specs(value: Any) -> Any:
    """``value`` with every backend config object turned back into its ``class_path``/``init_args`` spec, so that
    each stage's own parser reads it (jsonargparse may hand a spec inside a dict section over as an object)."""
    if isinstance(value, BackendConfig):
        return {"class_path": type(value).__name__, "init_args": asdict(value)}
    if isinstance(value, dict):
        return {k: _as_specs(v) for k, v in value.items()}
    return value


def _merge(base: dict, over: dict) -> dict:
    """``over`` merged into ``base``, nested dicts key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _fingerprint(source: str) -> str:
    """sha256 of a local file's bytes (files of a folder or glob: their names, sizes and times); a hub name or an
    asset is its own fingerprint (assets are pinned by hash)."""
    if source.startswith("asset:") or not is_local(source):
        return source
    p = Path(source)
    if p.is_file():
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    files = sorted(p.rglob("*")) if p.is_dir() else sorted(Path().glob(source))
    return hashlib.sha256(json.dumps([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files
                                      if f.is_file()]).encode()).hexdigest()


def peak_rss_gb() -> float:
    """The larger of this process's and its largest finished child's peak resident memory (``getrusage``)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, child) / 1024 ** 2  # KiB on Linux


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its living descendants (Linux ``/proc/<pid>/task/<tid>/children``); [] without ``/proc``."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue  # ended meanwhile
        for task in tasks:
            try:
                todo += [int(c) for c in (task / "children").read_text().split() if int(c) not in found]
            except OSError:
                pass
    return found if Path(f"/proc/{pid}").is_dir() else []


def tree_rss_bytes(pid: int) -> int:
    """Summed resident memory of ``pid`` and its descendants now (``/proc/<pid>/statm``). Pages two processes share
    (libraries, copy-on-write after fork) count in each, so the sum can exceed what the machine gives them."""
    total = 0
    for member in process_tree(pid):
        try:
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * _PAGE_BYTES
        except (OSError, IndexError, ValueError):
            pass  # ended meanwhile
    return total


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class TreeMemory:
    """The peak of this process tree's summed resident memory (``tree_rss_bytes``), sampled every ``interval_s``
    seconds by a daemon thread: ``getrusage`` knows only single processes (this one, and its largest waited-for
    child), while a stage's vLLM engine core, workers and grading processes are alive beside it (issue 27).
    ``mark()`` starts a new interval (one per stage) and returns the previous one's peak. A peak shorter than the
    interval can be missed."""

    def __init__(self, interval_s: float = 1.0, pid: int | None = None):
        import threading

        self.interval_s, self.pid = interval_s, pid or os.getpid()
        self.peak = self.interval_peak = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="tree-memory", daemon=True)

    def __enter__(self) -> TreeMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        now = tree_rss_bytes(self.pid)
        with self._lock:
            self.peak, self.interval_peak = max(self.peak, now), max(self.interval_peak, now)

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def mark(self) -> int:
        """The peak (bytes) since the last ``mark`` (or the start), and a new interval from now."""
        self._sample()
        with self._lock:
            peak, self.interval_peak = self.interval_peak, 0
        return peak
