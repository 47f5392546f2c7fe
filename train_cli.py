"""The command line of ``train.py`` (LightningCLI): which run a run directory holds, the resume checks, one-line
errors. Its use is in ``train.py``'s docstring."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from datamodules import SkillDataModule
from lightning_modules import CausalLMModule
from lightning_modules import run_dir as runs
from lightning_modules.checkpoint_export import saved_settings
from skill_distill.cli_errors import OneLineErrors, shows_help
from skill_distill.console import quiet_library_noise, take_verbose_flag
from skill_distill.io import ConfigError, DataError, atomic_write
from skill_distill.run_layout import RunLayout

log = logging.getLogger("train")
PROJECT_LOGGERS = ("train", "callbacks", "datamodules", "lightning_modules", "skill_distill")
DEFAULT_CLASSES = {"model": "lightning_modules.CausalLMModule", "data": "datamodules.SkillDataModule"}
"""The classes of a config whose ``model:`` / ``data:`` names none (every SFT config), spelt as jsonargparse
normalises a class path (the shortest import), which checkpoints record as ``_class_path``."""
RESUME_ENV = "SKILL_DISTILL_RESUME_FROM"
"""The first process's decision (checkpoint path, or empty for a new run), inherited by the ranks Lightning's
launcher starts later, which must not re-judge a directory the first rank has begun to write."""


class SkillArgumentParser(OneLineErrors, LightningArgumentParser):
    """A user's mistake is one line (no ~100 lines of usage first), with "did you mean" for a misspelt key and the
    file of a YAML syntax error (``skill_distill.cli_errors``, shared with the stage commands)."""

    def root_parser(self):
        return _ROOT_PARSER or super().root_parser()  # LightningCLI builds the subcommands' parsers apart

    def help_command(self, parser) -> str:
        sub = parser.prog.split()[-1]
        return "python train.py" + (f" {sub}" if sub in ("fit", "validate") else "")

    def error(self, message: str, ex: Exception | None = None):
        if self.exit_on_error:  # a bad key of a class-chosen section, said as for any other group
            parser = getattr(ex, "subcommand_parser", None) or self
            message = _class_section_problem(message, parser.prog.split()[-1])
        return super().error(message, ex)

    def known_keys(self) -> list[str]:
        return sorted(set(super().known_keys()) | {k for k in _class_keys() if not k.endswith(".help")})


_CLASS_PROBLEM = re.compile(r"Parser key \"(model|data)\":.*?Problem with given class_path '([\w.]+)':\s*(.*?)"
                            r"(?:\s+- Expected a <class 'NoneType'>.*)?$", re.S)


def _class_section_problem(message: str, subcommand: str) -> str:
    """jsonargparse reports a bad key of a ``model`` / ``data`` section (subclass mode) as a failed union of the
    class and None; say it as for any other group: ``unrecognized arguments: --model.lerning_rate=1`` (command
    line), ``Subcommand 'fit' does not accept option 'model.lerning_rate'`` (config file), ``model.learning_rate:
    Expected a <class 'float'> ...``."""
    found = _CLASS_PROBLEM.search(message)
    if not found:
        return message
    section, _, problem = found.groups()
    problem = problem.strip()
    unknown = re.match(r"Option '([\w.]+)' is not accepted", problem)
    if unknown:
        key = f"{section}.{unknown.group(1)}"
        given = [a for a in SkillArgumentParser.argv if a == f"--{key}" or a.startswith(f"--{key}=")]
        if given:  # on the command line: said as argparse says it
            return f"unrecognized arguments: {' '.join(given)}"
        return f"Subcommand '{subcommand}' does not accept option '{key}'"
    if problem.startswith("unrecognized arguments:"):  # a nested key comes back without its section
        return re.sub(r"--([\w.]+)", rf"--{section}.\1", problem)
    return re.sub(r"^Parser key \"([\w.]+)\":", rf"{section}.\1:", problem)


def _class_keys() -> list[str]:
    """``model.*`` / ``data.*`` keys of the classes a config may choose (subclass mode has one action per section,
    so the parser itself lists no such key)."""
    from jsonargparse import ArgumentParser

    from datamodules import OnPolicyDataModule
    from lightning_modules import OnPolicyModule

    keys = []
    for section, cls in (("model", OnPolicyModule), ("data", OnPolicyDataModule)):  # subclasses: all keys
        p = ArgumentParser(exit_on_error=False)
        p.add_class_arguments(cls, section, fail_untyped=False)
        keys += [a.dest for a in p._actions if getattr(a, "dest", None) not in (None, "help", "config")]
    return keys


_ROOT_PARSER = None
_HELD: RunLayout | None = None
"""The run directory this process holds (released when ``main`` returns)."""
_NEW_RUN: tuple[RunLayout, set[str] | None] | None = None
"""A new run's directory and the names it held before this attempt (``run_dir.discard_setup_leftovers``)."""
_TRAINER = None
"""The trainer of the run ``main`` fits (set just before ``fit``)."""


def _first_process() -> bool:
    """Global rank 0 of the job, before the process group exists (torchrun, SLURM, Lightning's launcher)."""
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
    return int(rank) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


class SkillCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # the module has training and validation steps only: `test` and `predict` would fail once their run started
        # (and building their parsers took 0.33 -> 0.26 CPU s of a quickstart parse without the attribute docstrings)
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in ("fit", "validate")}

    def init_parser(self, **kwargs):
        global _ROOT_PARSER
        parser = super().init_parser(**kwargs)
        if _ROOT_PARSER is None or not kwargs.get("description"):  # the main parser (subcommands have one)
            _ROOT_PARSER = parser
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        # model: and data: name their class (class_path + init_args, LightningCLI's subclass mode); a config without
        # class_path means these defaults, so `model: {model: ..., learning_rate: ...}` and --model.x keep working
        parser.set_defaults({section: {"class_path": path} for section, path in DEFAULT_CLASSES.items()})
        # one tokenizer for data and export
        parser.link_arguments("data.init_args.tokenizer", "model.init_args.tokenizer")

    def instantiate_classes(self) -> None:
        # subclass mode builds model: and data: as a union with None, which turns a user's mistake found while
        # building (a ConfigError / DataError from a class or its dataclass settings) into a ValueError listing the
        # union's members: raise the user's one line itself
        try:
            super().instantiate_classes()
        except ValueError as e:
            mistake = _user_mistake(e)
            if mistake is None:
                raise
            raise mistake from None

    def _parse_ckpt_path(self) -> None:
        # Lightning's version copies the checkpoint's model hyperparameters over the command line's, so a changed
        # learning rate was silently dropped; before_instantiate_classes compares them and refuses a change instead.
        # Private on purpose: LightningCLI (2.6) has no public switch for that merge, and it runs between the public
        # parse_arguments and before_instantiate_classes, so no public hook can skip it. It acts only when ckpt_path
        # is a file at parse time ("last" is resolved later, in _decide_run). Measured with Lightning 2.6.6 without
        # this override: `--ckpt_path <run>/checkpoints/step=0000003.ckpt --model.learning_rate=0.002` resumed,
        # exit 0, and config.resume-1.yaml recorded learning_rate 0.001. Guarded by
        # tests/test_lightning_private_members.py; the behaviour by test_run_safety's explicit-checkpoint case.
        pass

    # ---- the run directory --------------------------------------------------------------------------------------
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.get("default_root_dir")
        if not root:
            raise ConfigError("set trainer.default_root_dir: the run directory that holds this run's checkpoints, "
                              "logs, evaluations and export")
        root = Path(root)
        for logger in _as_list(config.trainer.get("logger")):  # loggers write inside the run directory
            init = getattr(logger, "init_args", None)
            if init is not None and "save_dir" in init and not init.save_dir:
                init.save_dir = str(root)
        if self.subcommand == "fit":
            _check_training_length(config.trainer)
            self._decide_run(config, root)

    def _decide_run(self, config, root: Path) -> None:
        ckpt = config.get("ckpt_path")
        if RESUME_ENV in os.environ and int(os.environ.get("LOCAL_RANK", "0")) > 0:  # started by Lightning's launcher
            config.ckpt_path = os.environ[RESUME_ENV] or None
            return
        layout = RunLayout(root)
        earlier = layout.earlier_run_outputs()
        ckpt_dir = layout.checkpoints
        resume = None
        if ckpt is None:
            if earlier:
                raise ConfigError(f"{root} holds an earlier run ({', '.join(earlier)}): resume it with --ckpt_path "
                                  "last, or start a new run with --trainer.default_root_dir <another directory>")
        elif ckpt == "last":
            resume = runs.resolve_resume(ckpt_dir, log=lambda line: print(line, file=sys.stderr))
            if resume is None:
                log.info("%s: no checkpoint yet, starting a new run", root)
        else:
            resume = Path(ckpt)
            if not resume.exists():
                raise DataError(f"--ckpt_path {ckpt}: no such checkpoint; use --ckpt_path last to resume the run in "
                                f"{root}, or a path to an existing .ckpt")
            problem = runs.checkpoint_problem(resume)
            if problem:
                raise DataError(f"--ckpt_path {ckpt}: {problem}; use another checkpoint (or --ckpt_path last for the "
                                f"newest readable one of {ckpt_dir})")
            if earlier and root.resolve() not in resume.resolve().parents:
                raise ConfigError(f"{root} holds an earlier run ({', '.join(earlier)}) and --ckpt_path {ckpt} is from "
                                  "another one: start from it in a new directory (--trainer.default_root_dir)")
        if resume is not None:
            self._check_fixed_settings(config, resume, root)
            finished = runs.read_finished(layout)
            if finished is not None:
                print(f"{root}: this run already finished (step {finished.get('global_step', '?')}); nothing to do. "
                      f"Its summary: {layout.finished}. To train again, use --trainer.default_root_dir "
                      "<another directory>", file=sys.stderr)
                raise SystemExit(0)
            log.info("resuming %s from %s", root, resume)
        if _first_process():  # the launched ranks and the other nodes work for the run that holds it
            global _HELD, _NEW_RUN
            before = runs.entries(root)
            taken = layout.hold()  # (refused while another run holds it: nothing here is ours to take back)
            _HELD = layout
            if resume is None:  # a refusal during set-up takes back what it wrote (main)
                _NEW_RUN = (layout, before)
            if taken is not None:
                print(f"{root}: taking over the hold of pid {taken.get('pid')} on {taken.get('host')} (started "
                      f"{taken.get('started')}), which no longer runs", file=sys.stderr)
        config.ckpt_path = str(resume) if resume is not None else None
        os.environ[RESUME_ENV] = config.ckpt_path or ""
        # the config of every attempt is kept (LightningCLI writes it into the first logger's directory):
        # config.yaml, then config.resume-<k>.yaml
        log_dir, name, k = _log_dir(config, root), "config.yaml", 1
        while (log_dir / name).exists():
            name, k = f"config.resume-{k}.yaml", k + 1
        self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": name}

    def _check_fixed_settings(self, config, ckpt: Path, root: Path) -> None:
        meta = runs.read_checkpoint_meta(ckpt)
        trainer = {k: config.trainer[k] for k in runs.FIXED_SETTINGS["trainer"]
                   if config.trainer.get(k) is not None}  # unset: Lightning's default, not compared
        seed = config.get("seed_everything")
        if seed is not True:  # True draws a new seed per run: nothing to compare
            trainer["seed_everything"] = None if seed is False or seed is None else int(seed)
        current = {section: section_settings(config[section]) for section in DEFAULT_CLASSES}
        current["trainer"] = trainer
        saved = saved_settings(meta)
        for section, path in DEFAULT_CLASSES.items():  # checkpoints from before class selection: the defaults
            saved[section].setdefault("class_path", path)
        changed = runs.changed_settings(saved, current)
        if changed:
            name, old, new = changed[0]
            more = f" (and {', '.join(c[0] for c in changed[1:])})" if len(changed) > 1 else ""
            raise ConfigError(f"{name}{more} is {json.dumps(new)} here but {json.dumps(old)} in the checkpoint {ckpt}: "
                              f"a resumed run keeps the settings it started with; drop the change to resume {root}, "
                              "or start a new run with --trainer.default_root_dir <another directory>")

    def before_fit(self) -> None:
        global _TRAINER
        _TRAINER = self.trainer  # main: a failure after its first step is not a refused set-up
        if self.trainer.is_global_zero:  # this node's whole tree: its launched ranks and vLLM children are in it
            from skill_distill.project import MEMORY_SAMPLE_S, TreeMemory

            self._memory = TreeMemory(MEMORY_SAMPLE_S).__enter__()  # a daemon thread; read in after_fit

    # ---- after training -------------------------------------------------------------------------------------------
    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        summary = run_summary(self.trainer)
        memory = getattr(self, "_memory", None)
        if memory is not None:
            from skill_distill.project import GIB, MEMORY_SAMPLE_S, peak_rss_gb

            memory.__exit__(None, None, None)
            summary["peak_memory_gb"] = {"process_tree": round(memory.peak / GIB, 2),
                                         "largest_process": round(peak_rss_gb(), 2),
                                         "sampled_every_s": MEMORY_SAMPLE_S}
        if not self.trainer.interrupted:
            with atomic_write(RunLayout.of(self.trainer).finished) as f:
                json.dump(summary, f, indent=1)
        print(format_summary(summary), file=sys.stderr)


def _user_mistake(error: BaseException) -> ConfigError | DataError | None:
    """The first ConfigError / DataError among the causes of ``error``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (ConfigError, DataError)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def section_settings(section) -> dict:
    """A parsed ``model`` / ``data`` section (``class_path`` + ``init_args``) as one flat mapping: its init
    arguments and its ``class_path``, the shape of a checkpoint's hyperparameters
    (``checkpoint_export.saved_settings``)."""
    return {**section.init_args.as_dict(), "class_path": section.class_path}


def _check_training_length(trainer) -> None:
    """Refuse a run that would train nothing (it "finished" with an untrained export) or never end."""
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if steps is not None and steps != -1 and steps < 1:
        raise ConfigError(f"trainer.max_steps is {steps}: a run trains at least 1 step; set a positive number, or -1 "
                          "(no step limit)")
    if epochs is not None and epochs < 1 and not (epochs == -1 and steps not in (None, -1)):
        raise ConfigError(f"trainer.max_epochs is {epochs}: a run trains at least 1 epoch; set a positive number "
                          "(-1, no epoch limit, only with a positive trainer.max_steps)")


def _as_list(value) -> list:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _log_dir(config, root: Path) -> Path:
    """Where LightningCLI saves the config: the first logger's directory (``trainer.log_dir``), else the run's."""
    loggers = _as_list(config.trainer.get("logger"))
    init = getattr(loggers[0], "init_args", None) if loggers else None
    if init is None:
        return root
    d = Path(init.get("save_dir") or root)
    if init.get("name"):
        d /= init.name
    if init.get("version") not in (None, ""):
        d /= str(init.version)
    return d


def run_summary(trainer) -> dict:
    """Where the run's outputs went and its latest evaluation: overall and weakest-skill accuracy per set."""
    from callbacks import HFExportCallback, SkillEvalCallback
    from callbacks.checkpointing import ResumableCheckpoint

    out: dict = {"run_dir": str(trainer.default_root_dir), "global_step": trainer.global_step,
                 "epochs": trainer.current_epoch, "checkpoints": None, "export": None, "evaluations": {},
                 "metrics": [getattr(lg, "log_dir", None) for lg in trainer.loggers]}
    for cb in trainer.callbacks:
        if isinstance(cb, ResumableCheckpoint):
            out["checkpoints"] = cb.dirpath
        elif isinstance(cb, HFExportCallback) and cb.last_export:
            out["export"] = cb.last_export
        elif isinstance(cb, SkillEvalCallback):
            # a resumed run with nothing left to train (killed after its final checkpoint) evaluated nothing itself:
            # its summary is the newest report the run wrote
            report, path = (cb.last_report, cb.reports.get(cb.last_report.get("tag"))) if cb.last_report \
                else _newest_report(cb.reports_dir(trainer))
            if report is None:
                continue
            for name, s in report["summary"].items():
                skills = [r for r in report["benchmarks"][name]["metrics"].get("skills", [])
                          if r.get("accuracy") is not None]
                weakest = min(skills, key=lambda r: (r["accuracy"], r["chain"]), default=None)
                out["evaluations"][name] = {
                    "tag": report.get("tag"), "accuracy": s.get("accuracy"), "report": path,
                    "weakest_skill": None if weakest is None else {"chain": weakest["chain"],
                                                                  "accuracy": weakest["accuracy"]}}
    return out


def _newest_report(reports_dir: Path) -> tuple[dict | None, str | None]:
    """The report of the latest step in an evaluation directory, and its path ((None, None): there is none)."""
    from skill_distill.skill_charts import load_report

    newest: tuple[tuple, dict, str] | None = None
    for path in reports_dir.glob("*/report.json"):
        try:
            report = load_report(path)
        except DataError:
            continue  # a damaged report is not a summary
        order = (report.get("global_step") or 0, report.get("tag") != "baseline", path.stat().st_mtime)
        if newest is None or order > newest[0]:
            newest = (order, report, str(path))
    return (newest[1], newest[2]) if newest else (None, None)


def format_summary(s: dict) -> str:
    lines = [f"run {s['run_dir']}: step {s['global_step']}"]
    for name, e in s["evaluations"].items():
        acc = "n/a" if e["accuracy"] is None else f"{100 * e['accuracy']:.1f}%"
        weak = e["weakest_skill"]
        weak = f"; weakest skill {weak['chain']} {100 * weak['accuracy']:.1f}%" if weak else ""
        lines.append(f"  evaluation {name} ({e['tag']}): {acc}{weak} -> {e['report']}")
    if s["checkpoints"]:
        lines.append(f"  checkpoints: {s['checkpoints']}")
    if s["export"]:
        lines.append(f"  export: {s['export']}")
    for d in s["metrics"]:
        if d:
            lines.append(f"  metrics: {d}")
    if s.get("peak_memory_gb"):
        m = s["peak_memory_gb"]
        lines.append(f"  peak memory of this run: {m['process_tree']:.1f} GB, this node's processes together "
                     f"(training, its ranks, evaluation children; sampled every {m['sampled_every_s']:g} s); the "
                     f"largest single process {m['largest_process']:.1f} GB")
    return "\n".join(lines)


STDERR_HANDLER = "skill_distill.stderr"
"""The name of the handler ``setup_logging`` gives the project's loggers."""


def setup_logging() -> None:
    """The project's own INFO lines (progress, evaluations, checkpoints) on stderr; other libraries keep theirs, but
    for the lines that carry nothing to act on (``skill_distill.console.QUIET_LOG_LINES``; ``--verbose`` keeps them)."""
    quiet_library_noise()
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(STDERR_HANDLER)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        # a second run in this process (a notebook, a test) writes to today's sys.stderr, not to the first run's;
        # handlers others added (a capture) do not take the place of this one
        for earlier in [h for h in logger.handlers if h.get_name() == STDERR_HANDLER]:
            logger.removeHandler(earlier)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


CLASS_SECTIONS = ("model", "data")
NULLS = ("null", "~", "None")


def nested_nulls_as_dicts(argv: list[str]) -> list[str]:
    """``--data.selection.max_depth=null`` as ``--data.selection={"max_depth": null}``: in a section whose class a
    config may choose (LightningCLI's subclass mode), jsonargparse 4.53 refuses a null given for a key of a nested
    dataclass ("Expected a <class 'int'>") or keeps it as the string "None"; the one-key dict form is merged into
    the dataclass as expected. Other arguments pass unchanged."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        key, value, used = None, None, 1
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif arg.startswith("--") and i + 1 < len(argv):
            key, value, used = arg[2:], argv[i + 1], 2
        parts = [p for p in (key or "").split(".") if p != "init_args"]
        if value in NULLS and len(parts) >= 3 and parts[0] in CLASS_SECTIONS:
            out.append(f"--{'.'.join(parts[:-1])}={json.dumps({parts[-1]: None})}")
            i += used
            continue
        out.append(arg)
        i += 1
    return out


def main(args: list[str] | None = None, run: bool = True) -> SkillCLI:
    global _HELD, _NEW_RUN, _TRAINER
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args is None:  # LightningCLI reads sys.argv itself (and the launched ranks run it again)
        sys.argv[1:] = nested_nulls_as_dicts(take_verbose_flag(sys.argv[1:]))
    else:
        args = nested_nulls_as_dicts(take_verbose_flag(list(args)))
    SkillArgumentParser.argv = list(sys.argv[1:] if args is None else args)  # a YAML error names its --config file
    setup_logging()
    set_parsing_settings(docstring_parse_attribute_docstrings=shows_help(SkillArgumentParser.argv))
    try:
        return SkillCLI(
            CausalLMModule,
            SkillDataModule,
            subclass_mode_model=True,  # e.g. lightning_modules.OnPolicyModule with datamodules.OnPolicyDataModule
            subclass_mode_data=True,
            trainer_defaults={"use_distributed_sampler": False},  # the data module plans batches per rank itself
            save_config_kwargs={"overwrite": True},  # the file name is new per attempt (see _decide_run)
            parser_class=SkillArgumentParser,
            args=args,
            run=run,
        )
    except (DataError, ConfigError):
        # refused before its first step: the corrected command starts it anew
        if _NEW_RUN is not None and (_TRAINER is None or _TRAINER.global_step == 0):
            runs.discard_setup_leftovers(*_NEW_RUN)
        raise
    finally:
        _NEW_RUN = _TRAINER = None
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            os.environ.pop(RESUME_ENV, None)  # for the launched ranks only, not for a later run in this process
        if _HELD is not None:  # (with run=False the caller drives the trainer itself: nothing is held for it)
            _HELD.release()
            _HELD = None


def run_from_command_line() -> None:
    """``python train.py ...``: a user-fixable mistake is one line and exit code 2, no traceback."""
    try:
        main()  # None: LightningCLI reads sys.argv itself (a list here would warn "args parameter ...")
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
