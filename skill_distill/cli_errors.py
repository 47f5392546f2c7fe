"""One error path for every command line (``train.py`` and ``python -m skill_distill <stage>``): a user's mistake is
one ``error:`` line, exit code 2, with "did you mean" for a misspelt key and the file, line and column of a YAML
syntax error, instead of jsonargparse's usage block (13-24 lines for a stage, ~100 for train.py) before it.

``OneLineErrors`` is a mixin for jsonargparse parsers: ``ArgumentParser`` for the stages (``StageArgumentParser``),
Lightning's ``LightningArgumentParser`` in ``train_cli.py`` (Lightning-free here, so the stages import nothing of
Lightning).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path

from jsonargparse import ArgumentParser

MAX_LINE = 400
"""Longer messages (a whole config dumped by jsonargparse) are cut."""


class OneLineErrors:
    """``error()`` writes one line and exits 2. Set ``argv`` (the command line being parsed) so that a YAML syntax
    error names its ``--config`` file; override ``help_command`` for the command the line points to."""

    argv: list[str] = []

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # argparse's prefix matching took --trainer.max_step for max_steps
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        # JSONARGPARSE_DEBUG is jsonargparse's documented switch for full errors (its reader is private)
        debug = os.environ.get("JSONARGPARSE_DEBUG", "").lower() == "true"
        if not self.exit_on_error or debug:  # jsonargparse parsing internally: it catches this
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        line = " ".join(message.split())
        yaml_problem = first_yaml_problem(self.argv) if "Problems parsing config" in message else None
        if yaml_problem:
            line = yaml_problem
        elif len(line) > MAX_LINE:
            line = line[:MAX_LINE] + " ..."
        line += did_you_mean(message, self.known_keys())
        sys.stderr.write(f"error: {line} (every option: {self.help_command(parser)} --help)\n")
        raise SystemExit(2)

    def known_keys(self) -> list[str]:
        """The keys a misspelt key is matched against."""
        return all_keys(self.root_parser())

    def root_parser(self):
        """The parser whose keys a misspelt key is matched against (the top one)."""
        root = self
        while getattr(root, "parent_parser", None) is not None:
            root = root.parent_parser
        return root

    def help_command(self, parser) -> str:
        """The command whose ``--help`` lists every option of ``parser``."""
        return " ".join(parser.prog.replace("[options]", "").split())


class StageArgumentParser(OneLineErrors, ArgumentParser):
    """The parser of ``python -m skill_distill <stage>``."""


def shows_help(argv: list[str]) -> bool:
    """Whether the command line asks jsonargparse for text that shows settings' descriptions (``--help``,
    ``--print_config``, a class's ``--<key>.help``). Only then are the dataclass fields' attribute docstrings worth
    reading: jsonargparse reads them by parsing the source of every class in a config's MRO at every parse, for
    descriptions no other parse shows (train.py's quickstart parse: 1.4 -> 0.26 CPU s without them)."""
    return any(a in ("-h", "--help") or a.startswith(("--print_config", "--print_shtab")) or a.endswith(".help")
               or ".help=" in a for a in argv)


def config_files(argv: list[str]) -> list[str]:
    files = []
    for i, a in enumerate(argv):
        if a in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif a.startswith("--config="):
            files.append(a.split("=", 1)[1])
    return files


def first_yaml_problem(argv: list[str]) -> str | None:
    """The first --config file that is not valid YAML, as ``<file>:<line>:<column>: <problem>``."""
    import yaml

    for f in config_files(argv):
        try:
            yaml.safe_load(Path(f).read_text(encoding="utf-8"))
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark
            return f"{f}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: {e.problem}"
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            return f"{f}: not a readable YAML file ({type(e).__name__}: {e})"
    return None


def all_keys(parser) -> list[str]:
    """Every option key of a parser and its subcommands' parsers."""
    keys = []
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if getattr(action, "dest", None) and action.dest not in ("help", "config"):
                keys.append(action.dest)
            stack.extend((getattr(action, "_name_parser_map", None) or {}).values())
    return sorted(k for k in set(keys) if not k.endswith(".help"))


def did_you_mean(message: str, keys: list[str]) -> str:
    """Close matches (difflib) among ``keys`` for the unknown key(s) in jsonargparse's message."""
    unknown = re.findall(r"--([\w.]+)", message.split("unrecognized arguments:", 1)[1]) \
        if "unrecognized arguments:" in message else []
    for kind, group, option in re.findall(r"(Group|Subcommand) '([\w.-]+)' does not accept option '([\w.]+)'",
                                          message):
        unknown.append(f"{group}.{option}" if kind == "Group" else option)
    for key in re.findall(r"[Kk]ey \"([\w.]+)\" is not expected", message):
        unknown.append(key)
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
        if close:
            hints.append(f"--{close[0]}" if "unrecognized" in message else close[0])
    return f"; did you mean {', '.join(hints)}?" if hints else ""
