"""`python train.py fit` on a shortened quickstart: a checkpoint and an HF export that reloads with identical logits.
The quickstart's vLLM evaluation is left out (not what this checks, and minutes on a loaded CPU; it is covered by
tests/test_skill_eval_callback.py on the same config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

import train

REPO = Path(__file__).resolve().parents[1]


def write_corpus(shared_dir: Path, path: Path, n: int = 24) -> Path:
    rows = [json.loads(line) for line in (shared_dir / "data/benchmarks/math500/test.jsonl").open()][:n]
    with path.open("w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"id": f"m{i}", "problem": r["problem"], "answer": r["answer"],
                                "trace": f"<think>\n{r['solution'][:300]}\n</think>\n\n"
                                         f"\\boxed{{{r['answer']}}}"}) + "\n")
    return path


@pytest.mark.slow
def test_fit_writes_checkpoint_and_export_with_identical_logits(tmp_path, monkeypatch, shared_dir, tiny_qwen3_dir,
                                                               qwen_tokenizer_dir):
    monkeypatch.chdir(tmp_path)
    corpus = write_corpus(shared_dir, tmp_path / "corpus.jsonl")
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"]
                                   if not c["class_path"].endswith("SkillEvalCallback")]
    (tmp_path / "quickstart.yaml").write_text(yaml.safe_dump(cfg))
    cli = train.main([
        "fit", "--config", str(tmp_path / "quickstart.yaml"),
        f"--model.model={tiny_qwen3_dir}", f"--data.tokenizer={qwen_tokenizer_dir}", f"--data.corpus={corpus}",
        f"--data.val_corpus={corpus}", "--data.selection.strategy=all", "--data.skill_format.mode=off",
        "--data.profile=null", "--data.tree=null", "--data.attribution=null",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.precision=32-true",
    ])
    run = tmp_path / "runs" / "quickstart"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = (run / "logs" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "train/grad_norm" in metrics and "train/tokens_per_s" in metrics
    assert cli.trainer.global_step == 2

    export = run / "hf_export" / "final"
    reloaded = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    assert reloaded.config.use_cache is True and reloaded.config.tie_word_embeddings
    exported = __import__("safetensors.torch", fromlist=["x"]).load_file(export / "model.safetensors")
    assert "lm_head.weight" not in exported
    trained = cli.model.model.eval()
    with torch.no_grad():  # the export was written in bf16 (quickstart's HFExportCallback dtype)
        for p in trained.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ids = torch.tensor([[151644, 872, 198, 3838, 374, 220, 17, 10, 17, 30, 151645]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, trained(ids).logits, rtol=0, atol=0)
    # the checkpoint holds the same weights
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    w = state["model.model.layers.0.self_attn.q_proj.weight"]
    torch.testing.assert_close(w.to(torch.bfloat16).float(), reloaded.model.layers[0].self_attn.q_proj.weight,
                               rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("length", [["--trainer.max_epochs=0"], ["--trainer.max_epochs=-3"],
                                    ["--trainer.max_steps=0"]], ids=["epochs-0", "epochs-negative", "steps-0"])
def test_a_run_that_would_train_nothing_is_refused_in_one_line(tmp_path, monkeypatch, shared_dir, tiny_qwen3_dir,
                                                               qwen_tokenizer_dir, length):
    """max_epochs 0 made a "finished" run with an untrained export (issue 28 §7): refused before anything is
    written."""
    from skill_distill.io import ConfigError

    monkeypatch.chdir(tmp_path)
    corpus = write_corpus(shared_dir, tmp_path / "c.jsonl", n=4)
    args = ["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), f"--model.model={tiny_qwen3_dir}",
            f"--data.tokenizer={qwen_tokenizer_dir}", f"--data.corpus={corpus}", "--data.val_corpus=null",
            "--trainer.default_root_dir=run", "--trainer.callbacks=[]", *length]
    with pytest.raises(ConfigError, match=r"^trainer\.max_(epochs|steps) is -?\d+: a run trains at least 1 "):
        train.main(args)
    assert not (tmp_path / "run").exists()


def test_the_summary_of_a_run_with_nothing_left_to_train_is_read_from_its_newest_report(tmp_path):
    """Killed between its final checkpoint and the end of fit, the resumed run trains and evaluates nothing: its
    run_finished.json took no evaluation (issue 28 §7). The newest report on disk is the summary."""
    import lightning.pytorch as pl

    from callbacks import SkillEvalCallback
    from train_cli import run_summary

    def report(tag: str, step: int, accuracy: float) -> None:
        path = tmp_path / "eval" / tag / "report.json"
        path.parent.mkdir(parents=True)
        skills = [{"chain": "Algebra -> Linear", "accuracy": accuracy / 2}, {"chain": "Number", "accuracy": accuracy}]
        path.write_text(json.dumps({"tag": tag, "global_step": step, "summary": {"heldout": {"accuracy": accuracy}},
                                    "benchmarks": {"heldout": {"metrics": {"skills": skills}}}}))

    report("baseline", 0, 0.25)
    report("epoch=1", 8, 0.5)
    report("epoch=0", 4, 0.375)
    (tmp_path / "eval" / "broken").mkdir()
    (tmp_path / "eval" / "broken" / "report.json").write_text("{")
    trainer = pl.Trainer(default_root_dir=tmp_path, callbacks=[SkillEvalCallback(benchmarks=["heldout"])],
                         logger=False, enable_progress_bar=False, enable_model_summary=False)
    evaluation = run_summary(trainer)["evaluations"]["heldout"]
    assert evaluation == {"tag": "epoch=1", "accuracy": 0.5, "report": str(tmp_path / "eval" / "epoch=1" /
                                                                          "report.json"),
                          "weakest_skill": {"chain": "Algebra -> Linear", "accuracy": 0.25}}


@pytest.mark.slow
def test_a_train_argument_mistake_is_one_line_with_did_you_mean(tmp_path, capsys):
    """train.py's parser errors go through the stage commands' path (skill_distill.cli_errors): one line, exit 2."""
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  lerning_rate: 1.0\n")
    config = ["fit", "--config", str(REPO / "configs" / "quickstart.yaml")]
    cases = [(["--trainer.max_step=2"], "error: unrecognized arguments: --trainer.max_step=2; did you mean "
                                        "--trainer.max_steps? (every option: python train.py fit --help)"),
             (["--config", str(typo)], "error: Subcommand 'fit' does not accept option 'model.lerning_rate'; did you "
                                       "mean model.learning_rate? (every option: python train.py fit --help)")]
    for args, expected in cases:
        with pytest.raises(SystemExit) as stop:
            train.main([*config, *args])
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1:] == [expected]


@pytest.mark.slow
def test_help_shows_the_settings_descriptions_and_only_the_runnable_subcommands(capsys):
    """Help reads the fields' attribute docstrings (other parses skip them); ``test`` and ``predict``, for which the
    module has no step, are not offered."""
    with pytest.raises(SystemExit) as stop:
        train.main(["fit", "--data.help", "SkillDataModule"])
    assert stop.value.code == 0
    assert "Cap of a leaf's inverse accuracy" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as stop:
        train.main(["test", "--config", str(REPO / "configs" / "quickstart.yaml")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1:] == [
        "error: argument subcommand: invalid choice: 'test' (choose from 'fit', 'validate') (every option: python "
        "train.py --help)"]


def test_only_a_command_line_that_shows_help_reads_the_attribute_docstrings():
    from skill_distill.cli_errors import shows_help

    for argv in (["fit", "--help"], ["-h"], ["fit", "--print_config"], ["--print_config=comments"],
                 ["fit", "--data.help", "SkillDataModule"], ["--model.help=CausalLMModule"]):
        assert shows_help(argv), argv
    for argv in (["fit", "--config", "help.yaml"], ["fit", "--trainer.max_steps=2"], []):
        assert not shows_help(argv), argv


def test_a_null_override_of_a_nested_setting_unsets_it(tmp_path, monkeypatch):
    """``--data.selection.max_depth=null`` (a dataclass inside a class-chosen section) unsets the setting: jsonargparse
    alone refuses it there ("Expected a <class 'int'>") or keeps the string "None"."""
    assert train.nested_nulls_as_dicts(["--data.selection.max_depth=null", "--model.distillation.teacher", "~",
                                        "--data.tree=null", "--trainer.max_epochs", "2"]) == [
        '--data.selection={"max_depth": null}', '--model.distillation={"teacher": null}', "--data.tree=null",
        "--trainer.max_epochs", "2"]
    monkeypatch.chdir(tmp_path)
    cli = train.main(["--config", str(REPO / "configs" / "quickstart.yaml"),
                      f"--trainer.default_root_dir={tmp_path / 'run'}", "--data.selection.max_depth=3",
                      "--data.selection.only_skill=Algebra", "--data.selection.budget=50",
                      "--data.selection.max_depth=null", "--data.selection.only_skill", "null"], run=False)
    selection = cli.datamodule.selection
    assert selection.max_depth is None and selection.only_skill is None and selection.budget == 50
