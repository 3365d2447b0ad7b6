"""Build CaP training data from GSM8K train: SFT rows and preference (DPO) rows.

For each question: the gold solution becomes a named-variable program (gsm8k_programs.py); the
drafts are the gold prose and a few systematically corrupted versions of it (corrupt.py). SFT
teaches (question, any draft) -> the correct program; DPO prefers the correct program over the
one that follows a corrupted draft. Given a model (`sample_model`), each question also gets
prose drafts sampled from it, and each (question, draft) prompt gets programs sampled from it:
a sampled program that prints the gold answer is one more SFT target and `chosen` program, any
other is one more `rejected` program. Every label is decided by running the program in the
sandbox against the gold answer, never by trusting the construction or the model. Row formats:
docs/data_formats.md.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cap_app.backends import transformers
from cap_app.backends.base import GenerationConfig
from cap_app.data.corrupt import FINAL_STYLES, KINDS, corrupt, render_draft
from cap_app.data.gsm8k_programs import Solution, UnsupportedSolution, parse_solution
from cap_app.engine.answers import answers_equal, extract_draft_answer
from cap_app.engine.program import extract_program
from cap_app.engine.prompts import format_draft_prompt, format_prompt, trl_row
from cap_app.models.loading import LoadedModel, ModelConfig, load_model

ANNOTATIONS, SAMPLED = "annotations", "sampled"  # where a program (or a draft) comes from


@dataclasses.dataclass
class DataBuildConfig:
    input: str = dataclasses.field(
        default="data/gsm8k/train.jsonl",
        metadata={"help": "GSM8K-style JSONL with question and answer (never the dev drafts or the test set)"},
    )
    output_dir: str = dataclasses.field(
        default="runs/data", metadata={"help": "folder for sft.jsonl, dpo.jsonl and report.json"}
    )
    limit: int | None = dataclasses.field(
        default=None, metadata={"help": "use only the first N questions (default: all)"}
    )
    corrupted_drafts: int = dataclasses.field(
        default=2, metadata={"help": "corrupted drafts per question, each of a different kind"}
    )
    kinds: str = dataclasses.field(
        default=",".join(KINDS), metadata={"help": "comma-separated corruption kinds to draw from"}
    )
    keep_annotations: float = dataclasses.field(
        default=0.5,
        metadata={"help": "probability that a draft keeps the <<a*b=c>> calculator annotations as plain text"},
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "random seed (same seed, same data)"})
    workers: int = dataclasses.field(default=2, metadata={"help": "parallel sandbox runs"})
    max_pairs_per_prompt: int = dataclasses.field(
        default=4,
        metadata={
            "help": "most DPO rows per (question, draft) prompt, drawn with --seed from all correct x wrong programs"
        },
    )
    sample_model: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "also add drafts and programs sampled from this model, labelled by execution: Hub id, local "
            "folder, .gguf file, or 'default' for the app's default model; unset: no sampling"
        },
    )
    sample_adapter: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "PEFT adapter for --sample-model, or 'none'; unset: as the app picks (this project's CaP "
            "adapter on the default model)"
        },
    )
    sampled_drafts: int = dataclasses.field(
        default=1, metadata={"help": "prose drafts sampled per question (with --sample-model)"}
    )
    sampled_programs: int = dataclasses.field(
        default=4, metadata={"help": "programs sampled per (question, draft) prompt (with --sample-model)"}
    )
    temperature: float = dataclasses.field(default=0.8, metadata={"help": "sampling temperature (with --sample-model)"})
    max_new_tokens: int = dataclasses.field(default=400, metadata={"help": "most tokens per sampled draft or program"})
    batch_size: int = dataclasses.field(
        default=8, metadata={"help": "sequences generated together; questions are also sampled this many at a time"}
    )


@dataclasses.dataclass
class _Material:
    """One question's material before its programs are run: solution, drafts, and the wrong programs
    that follow the corrupted drafts (not `results.Candidate`, a generated program)."""

    index: int
    solution: Solution
    drafts: list[tuple[str, str, str]]  # (kind, draft text, draft answer); kind "gold" = correct
    wrong_programs: dict[str, str]  # corruption kind -> the program that follows that draft


@dataclasses.dataclass
class _Prompt:
    """One (question, draft) prompt and its programs, each labelled by its sandbox run."""

    meta: dict  # id, question, draft, draft_kind, draft_answer, draft_correct, gold
    chosen: list[tuple[str, str]]  # (program, source): programs that print the gold answer
    rejected: list[tuple[str, str, str]]  # (program, source, rejected kind): programs that do not


@dataclasses.dataclass
class _Question:
    """A verified question: its material, which wrong programs are really wrong, and its prompts."""

    material: _Material
    wrong_ok: dict[str, bool]
    prompts: list[_Prompt]


def build(cfg: DataBuildConfig) -> dict:
    """Write sft.jsonl, dpo.jsonl and report.json under cfg.output_dir; return the report.

    Raises ValueError for bad options, OSError for unreadable input and ModelLoadError when
    `sample_model` cannot be loaded.
    """
    kinds = _check(cfg)
    rng = random.Random(cfg.seed)
    report: Counter = Counter()
    materials = []
    for index, row in enumerate(_read_rows(Path(cfg.input), cfg.limit)):
        report["questions"] += 1
        try:
            solution = parse_solution(row["question"], row["answer"])
        except UnsupportedSolution:
            report["unsupported_solution"] += 1
            continue
        materials.append(_gather_material(index, solution, kinds, cfg, rng))
    loaded = load_model(_sampler_config(cfg)) if cfg.sample_model else None  # fail before the long part

    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        questions = []
        for material, verdict in zip(materials, pool.map(_verify, materials), strict=True):
            if not verdict["chosen_ok"]:
                report["program_mismatch"] += 1
                continue
            report["verified_questions"] += 1
            prompts = _annotated_prompts(material, verdict["wrong_ok"], rng, report)
            questions.append(_Question(material, verdict["wrong_ok"], prompts))
        if loaded is not None:
            _sample(loaded, questions, cfg, rng, report, pool)

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sft.jsonl", "w") as sft, open(out / "dpo.jsonl", "w") as dpo:
        for question in questions:
            for prompt in question.prompts:
                _write_rows(prompt, cfg, sft, dpo, report)
    report_dict = {"config": dataclasses.asdict(cfg), **dict(sorted(report.items()))}
    (out / "report.json").write_text(json.dumps(report_dict, indent=2) + "\n")
    return report_dict


def sft_row(meta: dict, program: str, source: str) -> dict:
    """trl's prompt-completion row: CaP prompt -> a correct program, and where the program came from."""
    return trl_row(meta["question"], meta["draft"], {"completion": program}, {**meta, "source": source})


def dpo_row(meta: dict, chosen: tuple[str, str], rejected: tuple[str, str, str]) -> dict:
    """trl's preference row: a correct program over a wrong one, with their sources and how it is wrong."""
    (chosen_program, chosen_source), (rejected_program, rejected_source, rejected_kind) = chosen, rejected
    return trl_row(
        meta["question"],
        meta["draft"],
        {"chosen": chosen_program, "rejected": rejected_program},
        {**meta, "rejected_kind": rejected_kind, "chosen_source": chosen_source, "rejected_source": rejected_source},
    )


def _check(cfg: DataBuildConfig) -> list[str]:
    """The corruption kinds to use; ValueError with a one-line reason for a bad option."""
    kinds = [k.strip() for k in cfg.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown corruption kind(s): {', '.join(unknown)} (known: {', '.join(KINDS)})")
    if cfg.max_pairs_per_prompt < 1:
        raise ValueError("max_pairs_per_prompt must be at least 1")
    if cfg.sampled_drafts < 0 or cfg.sampled_programs < 0:
        raise ValueError("sampled_drafts and sampled_programs must be 0 or more")
    if cfg.sample_model:
        _generation_config(cfg, n=1)  # GenerationConfig checks temperature, max_new_tokens, batch_size
    return kinds


def _sampler_config(cfg: DataBuildConfig) -> ModelConfig:
    return ModelConfig(model=None if cfg.sample_model == "default" else cfg.sample_model, adapter=cfg.sample_adapter)


def _generation_config(cfg: DataBuildConfig, *, n: int, seed: int = 0, prose: bool = False) -> GenerationConfig:
    """Sampling settings; a prose draft must not stop at a closed ``` block like a program does."""
    return GenerationConfig(
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        n=n,
        batch_size=cfg.batch_size,
        seed=cfg.seed + seed,
        stop_at_program_end=not prose,
    )


def _read_rows(path: Path, limit: int | None):
    with open(path) as handle:
        for n, line in enumerate(handle):
            if limit is not None and n >= limit:
                return
            if line.strip():
                yield json.loads(line)


def _gather_material(
    index: int, solution: Solution, kinds: list[str], cfg: DataBuildConfig, rng: random.Random
) -> _Material:
    def style() -> dict:
        return {"keep_annotations": rng.random() < cfg.keep_annotations, "final_style": rng.choice(FINAL_STYLES)}

    gold_draft, gold_answer = render_draft(solution, **style())
    drafts = [("gold", gold_draft, gold_answer)]
    wrong_programs = {}
    for kind in rng.sample(kinds, len(kinds)):
        if len(wrong_programs) == cfg.corrupted_drafts:
            break
        corruption = corrupt(solution, kind, rng)
        if corruption is None:
            continue
        draft, answer = render_draft(solution, corruption, **style())
        drafts.append((kind, draft, answer))
        wrong_programs[kind] = solution.program(corruption.steps)
    return _Material(index, solution, drafts, wrong_programs)


def _verify(material: _Material) -> dict:
    """Run the correct program and every wrong one; labels come from these runs only."""
    gold = material.solution.gold
    wrong_ok = {}
    for kind, program in material.wrong_programs.items():
        result = _run(program)
        wrong_ok[kind] = result.ok and result.answer is not None and not answers_equal(result.answer, gold)
    return {"chosen_ok": _prints_gold(_run(material.solution.program()), gold), "wrong_ok": wrong_ok}


def _run(program: str):
    from cap_app.sandbox import run_program

    return run_program(program, trace=False)


def _prints_gold(result, gold: str) -> bool:
    return result.ok and result.answer is not None and answers_equal(result.answer, gold)


def _failure(result) -> str:
    """How a sampled program that does not print the gold answer went wrong."""
    if not result.ok:
        return result.status  # error, timeout, rejected, memory
    return "no_answer" if result.answer is None else "wrong_answer"


def _annotated_prompts(
    material: _Material, wrong_ok: dict[str, bool], rng: random.Random, report: Counter
) -> list[_Prompt]:
    """The gold and corrupted drafts' prompts. Each rejects the program that follows its draft's
    corruption (the gold draft: one of the question's corruptions), when that one is really wrong."""
    prompts = []
    for kind, draft, draft_answer in material.drafts:
        rejected_kind = kind if kind != "gold" else _any_corruption(material, rng)
        if kind != "gold" and not wrong_ok.get(kind):
            report["corruption_not_wrong"] += 1
            continue
        report[f"drafts_{kind}"] += 1
        prompts.append(_prompt(material, wrong_ok, _meta(material, kind, kind, draft, draft_answer), rejected_kind))
    return prompts


def _any_corruption(material: _Material, rng: random.Random) -> str:
    return rng.choice(sorted(material.wrong_programs) or [""])


def _prompt(material: _Material, wrong_ok: dict[str, bool], meta: dict, rejected_kind: str) -> _Prompt:
    """A prompt that chooses the correct program and rejects the `rejected_kind` one if it is really wrong."""
    rejected = []
    if wrong_ok.get(rejected_kind):
        rejected.append((material.wrong_programs[rejected_kind], ANNOTATIONS, rejected_kind))
    return _Prompt(meta, chosen=[(material.solution.program(), ANNOTATIONS)], rejected=rejected)


def _sample(
    loaded: LoadedModel,
    questions: list[_Question],
    cfg: DataBuildConfig,
    rng: random.Random,
    report: Counter,
    pool: ThreadPoolExecutor,
) -> None:
    """Add the model's drafts (as more prompts) and programs (as more chosen or rejected programs),
    `batch_size` questions per step so that each generate_batch call fills its batches."""
    from tqdm import tqdm

    tokenizer = loaded.tokenizer
    for key in (
        "sampled_drafts",
        "sampled_drafts_correct",
        "sampled_programs",
        "sampled_programs_correct",
        "sampled_programs_wrong",
    ):
        report[key] += 0  # listed in the report even when none are
    with tqdm(total=len(questions), desc="sampling", unit="question", file=sys.stderr) as progress:
        for start in range(0, len(questions), cfg.batch_size):
            chunk = questions[start : start + cfg.batch_size]
            if cfg.sampled_drafts:
                draft_prompts = [format_draft_prompt(tokenizer, q.material.solution.question) for q in chunk]
                config = _generation_config(cfg, n=cfg.sampled_drafts, seed=start, prose=True)
                for question, generations in zip(
                    chunk, transformers.generate_batch(loaded, draft_prompts, config), strict=True
                ):
                    for sampled in generations:
                        _add_sampled_draft(question, sampled.text, rng, report)
            if cfg.sampled_programs:
                prompts = [prompt for question in chunk for prompt in question.prompts]
                texts = [format_prompt(tokenizer, p.meta["question"], p.meta["draft"]) for p in prompts]
                config = _generation_config(cfg, n=cfg.sampled_programs, seed=start)
                programs = [
                    [extract_program(g.text) for g in group]
                    for group in transformers.generate_batch(loaded, texts, config)
                ]
                results = pool.map(_run, [program for group in programs for program in group])
                for prompt, group in zip(prompts, programs, strict=True):
                    for program in group:
                        _add_sampled_program(prompt, program, next(results), report)
            progress.update(len(chunk))


def _add_sampled_draft(question: _Question, text: str, rng: random.Random, report: Counter) -> None:
    """A sampled prose draft becomes one more prompt of its question, right or wrong by its final answer."""
    report["sampled_drafts"] += 1
    draft = text.strip()
    if not draft:
        report["sampled_drafts_blank"] += 1
        return
    material = question.material
    answer = extract_draft_answer(draft)
    if answers_equal(answer, material.solution.gold):
        report["sampled_drafts_correct"] += 1
    report[f"drafts_{SAMPLED}"] += 1
    name = f"{SAMPLED}{sum(p.meta['draft_kind'] == SAMPLED for p in question.prompts)}"
    meta = _meta(material, name, SAMPLED, draft, answer)
    question.prompts.append(_prompt(material, question.wrong_ok, meta, _any_corruption(material, rng)))


def _add_sampled_program(prompt: _Prompt, program: str, result, report: Counter) -> None:
    """Label a sampled program by its sandbox run: chosen when it prints the gold answer, else rejected."""
    report["sampled_programs"] += 1
    correct = _prints_gold(result, prompt.meta["gold"])
    report["sampled_programs_correct" if correct else "sampled_programs_wrong"] += 1
    if program.strip() in {known.strip() for known, *_ in prompt.chosen + prompt.rejected}:
        report["sampled_programs_duplicate"] += 1
    elif correct:
        prompt.chosen.append((program, SAMPLED))
    else:
        prompt.rejected.append((program, SAMPLED, _failure(result)))


def _write_rows(prompt: _Prompt, cfg: DataBuildConfig, sft, dpo, report: Counter) -> None:
    """One SFT row per correct program; DPO rows for correct x wrong programs, at most
    `max_pairs_per_prompt`, drawn with a generator seeded by the prompt's id so that the cap does
    not shift any other random choice."""
    for program, source in prompt.chosen:
        sft.write(json.dumps(sft_row(prompt.meta, program, source)) + "\n")
        report["sft_rows"] += 1
        if source == SAMPLED:
            report["sft_rows_sampled"] += 1
    pairs = [(chosen, rejected) for chosen in prompt.chosen for rejected in prompt.rejected]
    if len(pairs) > cfg.max_pairs_per_prompt:
        report["dpo_pairs_over_cap"] += len(pairs) - cfg.max_pairs_per_prompt
        picked = random.Random(f"{cfg.seed}:{prompt.meta['id']}").sample(range(len(pairs)), cfg.max_pairs_per_prompt)
        pairs = [pairs[i] for i in sorted(picked)]
    for chosen, rejected in pairs:
        dpo.write(json.dumps(dpo_row(prompt.meta, chosen, rejected)) + "\n")
        report["dpo_rows"] += 1
        if SAMPLED in (chosen[1], rejected[1]):
            report["dpo_rows_sampled"] += 1


def _meta(material: _Material, name: str, kind: str, draft: str, draft_answer: str | None) -> dict:
    return {
        "id": f"gsm8k-train-{material.index:05d}-{name}",
        "question": material.solution.question,
        "draft": draft,
        "draft_kind": kind,
        "draft_answer": draft_answer,
        "draft_correct": answers_equal(draft_answer, material.solution.gold),
        "gold": material.solution.gold,
    }
