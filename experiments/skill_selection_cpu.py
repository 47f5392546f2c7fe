"""Does skill-based selection help a real small student here? The method end to end on CPU, as one command.

    python experiments/skill_selection_cpu.py --config configs/experiments/skill_selection_cpu.yaml
    python experiments/skill_selection_cpu.py --config configs/experiments/skill_selection_cpu.yaml --seeds [0,1,2]

Every step is one of the project's own commands (run as a subprocess, printed before it runs) and is skipped when
its output exists, so an interrupted run resumes where it stopped; the data, the warm-up, the profile and the
starting-point evaluations are shared by all seeds and arms.

1. data      ``make-data`` (synthetic skill tree, verified worked traces); a small per-skill warm-up split is
             taken out of the pool.
2. warm-up   SmolLM2-135M-Instruct never writes ``\\boxed{}`` as released (0-1 of 40 greedy answers), which would make
             every skill weight w_max. A short format-only SFT on the warm-up split, shared by all arms, gives the
             student the answer format; it is the starting point of every arm and the "untrained" arm.
3. profile   ``profile``: the warmed-up student answers every pool problem (greedy), graded per skill.
             Pre-check: the per-leaf accuracies must show a spread.
4. arms      per seed, same budget and steps: random selection; skill selection; skill selection + skill-aware
             format (``train.py fit``). Seeds vary the selection, the data order and the shuffle; decoding is
             greedy (fixed).
5. evaluate  ``evaluate`` on the held-out problems of every skill (greedy), per arm.
6. report    statistics decided in advance (see ``analyse``): overall accuracy per arm with a bootstrap interval
             over problems; per-skill change; Spearman correlation across leaves between (selection share in the
             skill arm minus in the random arm) and (accuracy gain of the skill arm over the random arm), with a
             bootstrap interval. Writes results.json, results.md and results.png, and the README section.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from skill_distill.io import read_json, read_jsonl, write_json, write_jsonl  # noqa: E402 - after the sys.path.insert above

ARMS = ("random", "skill", "skill_format")
README_START, README_END = "<!-- evidence:start -->", "<!-- evidence:end -->"


@dataclass
class ExperimentConfig:
    work_dir: str = "runs/evidence"
    """Where every intermediate artifact goes (resumable)."""
    results_dir: str = "results/evidence"
    """Where results.json/.md/.png go (committed)."""
    student: str = "asset:smollm2-135m-instruct"
    pool_per_leaf: int = 200
    """Pool problems per leaf skill (14 leaves)."""
    heldout_per_leaf: int = 40
    """Held-out evaluation problems per leaf skill."""
    data_seed: int = 0
    warmup_per_leaf: int = 4
    """Problems per leaf taken out of the pool for the shared format warm-up."""
    warmup_epochs: int = 2
    budget: int = 160
    """Examples selected per arm (about 6% of the pool)."""
    epochs: int = 3
    learning_rate: float = 5.0e-5
    examples_per_step: int = 8
    max_length: int = 384
    max_new_tokens: int = 192
    """Generation budget of the profile and the evaluations (traces are about 50-140 tokens)."""
    bootstrap_resamples: int = 2000
    update_readme: bool = True


def run(cmd: list[str], log: Path) -> None:
    """Run one project command; its output goes to ``log``; a failure stops the experiment with that log named."""
    print(f"$ {shlex.join(cmd)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.time()
    with log.open("a") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode:
        raise SystemExit(f"error: step failed (exit {proc.returncode}); see {log}")
    print(f"  done in {time.time() - t:.0f} s", flush=True)


def prepare_data(cfg: ExperimentConfig, work: Path) -> Path:
    data = work / "data"
    if not (data / "metadata.json").exists():
        run([sys.executable, "-m", "skill_distill", "make-data", "--output_dir", str(data), "--preset", "evidence",
             "--seed", str(cfg.data_seed), "--pool_per_leaf", str(cfg.pool_per_leaf + cfg.warmup_per_leaf),
             "--heldout_per_leaf", str(cfg.heldout_per_leaf)], work / "logs" / "make_data.log")
    if not (data / "train_pool.jsonl").exists():
        # the first warmup_per_leaf problems of each leaf go to the warm-up, the rest is the selection pool
        chains = {r["id"]: tuple(r["chains"][0]) for r in read_jsonl(data / "attribution.jsonl")}
        taken: dict[tuple, int] = {}
        warm, pool = [], []
        for row in read_jsonl(data / "pool.jsonl"):
            leaf = chains[row["id"]]
            if taken.get(leaf, 0) < cfg.warmup_per_leaf:
                taken[leaf] = taken.get(leaf, 0) + 1
                warm.append(row)
            else:
                pool.append(row)
        write_jsonl(data / "warmup.jsonl", warm)
        write_jsonl(data / "train_pool.jsonl", pool)
    return data


def train_cmd(cfg: ExperimentConfig, run_dir: Path, model: str, corpus: Path, data: Path, *, epochs: int,
              strategy: str, seed: int, skill_format: str, profile: Path | None) -> list[str]:
    return [sys.executable, "train.py", "fit", "--config", "configs/experiments/skill_selection_arm.yaml",
           f"--trainer.default_root_dir={run_dir}", f"--trainer.max_epochs={epochs}",
           f"--seed_everything={seed}",
           f"--model.model={model}", f"--model.learning_rate={cfg.learning_rate}",
           f"--data.corpus={corpus}", f"--data.tree={data / 'tree.json'}",
           f"--data.attribution={data / 'attribution.jsonl'}",
           f"--data.profile={profile if profile else 'null'}", f"--data.selection.strategy={strategy}",
           f"--data.selection.budget={cfg.budget}", f"--data.selection.seed={seed}", f"--data.seed={seed}",
           f"--data.skill_format.mode={skill_format}", f"--data.max_length={cfg.max_length}",
           f"--data.examples_per_step={cfg.examples_per_step}", "--ckpt_path=last"]


def exported(run_dir: Path) -> Path:
    return run_dir / "hf_export" / "final"


def evaluate(cfg: ExperimentConfig, model: str, data: Path, out: Path, log: Path, manifest: Path | None = None) -> dict:
    if not (out / "report.json").exists():
        spec = {"name": "heldout", "path": str(data / "heldout.jsonl"), "id_field": "id",
                "skills": {"attribution": str(data / "attribution.jsonl")}, "k": 1}
        cmd = [sys.executable, "-m", "skill_distill", "evaluate", "--model", model, "--output_dir", str(out),
               "--benchmarks", json.dumps([spec]), "--tree", str(data / "tree.json"),
               "--sampling", json.dumps({"temperature": 0.0, "top_p": 1.0, "max_new_tokens": cfg.max_new_tokens,
                                         "n": 1, "seed": 0}),
               "--backend", json.dumps({"kind": "vllm", "max_model_len": 1024})]
        if manifest is not None:
            cmd += ["--selection_manifest", str(manifest)]
        run(cmd, log)
    return read_json(out / "report.json")


def per_problem(records_path: Path) -> dict[str, float]:
    return {str(r["id"]): float(bool(r["correct"])) for r in read_jsonl(records_path, allow_torn_tail=True)}


def analyse(cfg: ExperimentConfig, data: Path, runs: dict, seeds: list[int], profile: dict) -> dict:
    """The pre-declared statistics; problems are the unit of every bootstrap."""
    import numpy as np
    from scipy.stats import spearmanr

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

    out: dict = {"leaves": ["->".join(c) for c in leaves], "heldout_problems": len(heldout_ids), "seeds": {}}
    starts = {name: vec(per_problem(Path(p))) for name, p in runs["start"].items()}
    out["start"] = {name: {**overall(v), "per_leaf": leaf_acc(v).tolist()} for name, v in starts.items()}
    pooled_gain = []
    for seed in seeds:
        arms = {arm: vec(per_problem(Path(runs[seed][arm]["records"]))) for arm in ARMS}
        share = {}
        for arm in ("random", "skill"):
            manifest = read_json(runs[seed][arm]["manifest"])
            counts = np.zeros(len(leaves))
            for i in manifest["ids"]:
                counts[leaves.index(chains[i])] += 1
            share[arm] = counts / counts.sum()
        d_share = share["skill"] - share["random"]
        gain = leaf_acc(arms["skill"]) - leaf_acc(arms["random"])
        rho = float(spearmanr(d_share, gain).statistic)
        rhos = []
        for b in boots[: min(1000, len(boots))]:
            g = leaf_acc(arms["skill"], b) - leaf_acc(arms["random"], b)
            if np.std(g) > 0:
                rhos.append(spearmanr(d_share, g).statistic)
        pooled_gain.append(arms["skill"] - arms["random"])
        out["seeds"][str(seed)] = {
            "arms": {arm: {**overall(v), "per_leaf": leaf_acc(v).tolist()} for arm, v in arms.items()},
            "selection_share": {arm: s.tolist() for arm, s in share.items()},
            "spearman_share_vs_gain": {"rho": rho, "ci_low": float(np.nanpercentile(rhos, 2.5)),
                                       "ci_high": float(np.nanpercentile(rhos, 97.5))},
            "skill_minus_random": overall(arms["skill"] - arms["random"]),
            "skill_format_minus_random": overall(arms["skill_format"] - arms["random"]),
        }
    out["pooled_skill_minus_random"] = overall(np.mean(pooled_gain, axis=0))
    out["profile_leaf_accuracy"] = profile
    return out


def write_results(cfg: ExperimentConfig, results: dict, results_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    seeds = list(results["seeds"])
    lines = [f"Held-out problems: {results['heldout_problems']} over {len(results['leaves'])} leaf skills; "
             f"budget {cfg.budget} examples x {cfg.epochs} epochs per arm; greedy decoding; "
             f"seeds {', '.join(seeds)}.", "",
             "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]

    def cell(m: dict) -> str:
        return f"{100 * m['accuracy']:.1f} [{100 * m['ci_low']:.1f}, {100 * m['ci_high']:.1f}]"

    for name, key in (("untrained SmolLM2-135M-Instruct", "base"), ("warm-up student (start of every arm)", "warm")):
        lines.append(f"| {name} | " + " | ".join(cell(results["start"][key]) for _ in seeds) + " |")
    for arm in ARMS:
        lines.append(f"| {arm} | " + " | ".join(cell(results["seeds"][s]["arms"][arm]) for s in seeds) + " |")
    lines.append("| skill - random (paired) | "
                 + " | ".join(cell(results["seeds"][s]["skill_minus_random"]) for s in seeds) + " |")
    lines.append("| skill+format - random (paired) | "
                 + " | ".join(cell(results["seeds"][s]["skill_format_minus_random"]) for s in seeds) + " |")
    lines.append("| Spearman(share gain, acc gain) | " + " | ".join(
        "{rho:.2f} [{ci_low:.2f}, {ci_high:.2f}]".format(**results["seeds"][s]["spearman_share_vs_gain"])
        for s in seeds) + " |")
    p = results["pooled_skill_minus_random"]
    lines += ["", f"Pooled over seeds, skill - random: {100 * p['accuracy']:+.1f} points "
                  f"[{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}] "
                  "(accuracy in %, 95% bootstrap over problems)."]
    # per leaf, mean over seeds: what the profile said, where each arm's data went, what each arm reached
    def mean(f):
        return np.mean([f(results["seeds"][s]) for s in seeds], axis=0)

    share = {arm: mean(lambda r, a=arm: r["selection_share"][a]) for arm in ("random", "skill")}
    acc = {arm: mean(lambda r, a=arm: r["arms"][a]["per_leaf"]) for arm in ARMS}
    lines += ["", f"Per leaf (mean over seeds {', '.join(seeds)}): the warm-up student's pool accuracy (the profile), "
                  "each arm's share of the selected examples, and held-out accuracy.", "",
              "| leaf | profile acc | share random | share skill | warm-up | random | skill | skill+format |",
              "|---|---|---|---|---|---|---|---|"]
    for k, leaf in enumerate(results["leaves"]):
        lines.append(f"| {leaf.split('->')[-1]} | {results['profile_leaf_accuracy'][leaf]:.3f} | "
                     f"{100 * share['random'][k]:.0f}% | {100 * share['skill'][k]:.0f}% | "
                     f"{100 * results['start']['warm']['per_leaf'][k]:.1f} | "
                     + " | ".join(f"{100 * acc[arm][k]:.1f}" for arm in ARMS) + " |")
    table = "\n".join(lines)

    leaves = results["leaves"]
    x = np.arange(len(leaves))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(13, 8.5), sharex=True)
    width = 0.2
    series = [("warm-up student", results["start"]["warm"]["per_leaf"], "#999999")] + [
        (arm, acc[arm], c) for arm, c in zip(ARMS, ("#4c72b0", "#dd8452", "#55a868"), strict=True)]
    for k, (label, vals, color) in enumerate(series):
        ax1.bar(x + (k - 1.5) * width, 100 * np.asarray(vals), width, label=label, color=color)
    ax1.set_ylabel("held-out accuracy (%)")
    ax1.set_title(f"Per-skill held-out accuracy (mean over seeds {', '.join(seeds)})")
    ax1.legend(ncol=4, fontsize=9)
    d_share, gain = share["skill"] - share["random"], acc["skill"] - acc["random"]  # means over seeds
    ax2.bar(x - 0.2, 100 * d_share, 0.4, label="selection share: skill - random (points)", color="#8172b3")
    ax2.bar(x + 0.2, 100 * gain, 0.4, label="accuracy: skill - random (points)", color="#dd8452")
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.legend(fontsize=9)
    ax2.set_xticks(x, [lf.split("->")[-1] for lf in leaves], rotation=40, ha="right")
    rhos = ", ".join(f"{results['seeds'][s]['spearman_share_vs_gain']['rho']:.2f}" for s in seeds)
    ax2.set_title("Where selection put more data vs where accuracy moved "
                  f"(mean over seeds; Spearman rho per seed: {rhos})")
    fig.tight_layout()
    results_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(results_dir / "results.png", dpi=110)
    plt.close(fig)
    (results_dir / "results.md").write_text(table + "\n")
    write_json(results_dir / "results.json", results)
    return table


def update_readme(table: str, cfg: ExperimentConfig, command: str) -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    if README_START not in text:
        return
    section = (f"{README_START}\n{table}\n\n![per-skill results]({cfg.results_dir}/results.png)\n\n"
               f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}.\n{README_END}")
    head, rest = text.split(README_START, 1)
    readme.write_text(head + section + rest.split(README_END, 1)[1])


def main(experiment: ExperimentConfig = ExperimentConfig(), seeds: list[int] = [0]) -> dict:  # noqa: B006 - shown in --help, never mutated
    """Run (or resume) the experiment for ``seeds`` and write its report.

    Args:
        experiment: the experiment's settings.
        seeds: selection / data-order seeds, one set of three trained arms each.
    """
    cfg = experiment
    work = REPO / cfg.work_dir
    data = prepare_data(cfg, work)
    logs = work / "logs"
    # 2. format warm-up shared by all arms
    warm_dir = work / "warmup"
    if not exported(warm_dir).exists():
        run(train_cmd(cfg, warm_dir, cfg.student, data / "warmup.jsonl", data, epochs=cfg.warmup_epochs,
                      strategy="all", seed=0, skill_format="off", profile=None), logs / "warmup.log")
    student = str(exported(warm_dir))
    # 3. profile of the warmed-up student on the pool (greedy)
    prof_dir = work / "profile"
    if not (prof_dir / "profile.json").exists():
        run([sys.executable, "-m", "skill_distill", "profile", "--pool", str(data / "train_pool.jsonl"),
             "--tree", str(data / "tree.json"), "--attribution", str(data / "attribution.jsonl"),
             "--output_dir", str(prof_dir),
             "--backend", json.dumps({"kind": "vllm", "model": student, "max_model_len": 1024}),
             "--sampling", json.dumps({"temperature": 0.0, "top_p": 1.0, "max_new_tokens": cfg.max_new_tokens,
                                       "n": 1, "seed": 0}),
             "--grader_workers", "2"], logs / "profile.log")
    nodes = read_json(prof_dir / "profile.json")["nodes"]
    profile = {n["chain"]: n["accuracy"] for n in nodes if n.get("is_leaf")}
    print("pre-check, warm-up student's pool accuracy per leaf:", json.dumps(profile, indent=1))
    spread = max(profile.values()) - min(profile.values())
    if spread < 0.2:
        print(f"WARNING: leaf accuracies spread only {spread:.2f}; selection has little to act on", flush=True)
    # starting points
    runs: dict = {"start": {}}
    for key, model in (("base", cfg.student), ("warm", student)):
        evaluate(cfg, model, data, work / "eval" / key, logs / f"eval_{key}.log")
        runs["start"][key] = str(work / "eval" / key / "records.jsonl")
    # 4-5. arms
    for seed in seeds:
        runs[seed] = {}
        for arm in ARMS:
            run_dir = work / f"seed{seed}" / arm
            if not exported(run_dir).exists():
                run(train_cmd(cfg, run_dir, student, data / "train_pool.jsonl", data, epochs=cfg.epochs,
                              strategy="random" if arm == "random" else "skill", seed=seed,
                              skill_format="full" if arm == "skill_format" else "off",
                              profile=prof_dir / "profile.json"), logs / f"train_seed{seed}_{arm}.log")
            manifest = run_dir / "selection_manifest.json"
            evaluate(cfg, str(exported(run_dir)), data, run_dir / "eval", logs / f"eval_seed{seed}_{arm}.log", manifest)
            runs[seed][arm] = {"records": str(run_dir / "eval" / "records.jsonl"), "manifest": str(manifest)}
    results = analyse(cfg, data, runs, seeds, profile)
    results["config"] = asdict(cfg)
    table = write_results(cfg, results, REPO / cfg.results_dir)
    # the profile itself (with judged counts), for the degeneracy checks of the selection stages
    write_json(REPO / cfg.results_dir / "profile.json", read_json(prof_dir / "profile.json"))
    print(table)
    if cfg.update_readme:
        update_readme(table, cfg, f"python experiments/skill_selection_cpu.py --config "
                                  f"configs/experiments/skill_selection_cpu.yaml --seeds {json.dumps(seeds)}")
    return results


if __name__ == "__main__":
    from jsonargparse import CLI, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    random.seed(0)
    CLI(main, as_positional=False)
