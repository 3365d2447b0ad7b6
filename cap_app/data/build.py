"""Build CaP training data from GSM8K train: SFT rows and preference (DPO) rows.

For each question: the gold solution becomes a named-variable program (annotations.py); the
drafts are the gold prose and a few systematically corrupted versions of it (corrupt.py). SFT
teaches (question, any draft) -> the correct program; DPO prefers the correct program over the
one that follows a corrupted draft. Every label is decided by running the program in the
sandbox against the gold answer, never by trusting the construction. Row formats:
docs/data_formats.md.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cap_app.data.annotations import Solution, UnsupportedSolution, parse_solution
from cap_app.data.corrupt import FINAL_STYLES, KINDS, corrupt, render_draft
from cap_app.prompts import build_messages, format_completion


@dataclasses.dataclass
class DataBuildConfig:
    input: str = dataclasses.field(default="data/gsm8k/train.jsonl", metadata={
        "help": "GSM8K-style JSONL with question and answer (never the dev drafts or the test set)"})
    output_dir: str = dataclasses.field(default="runs/data", metadata={
        "help": "folder for sft.jsonl, dpo.jsonl and report.json"})
    limit: int | None = dataclasses.field(default=None, metadata={
        "help": "use only the first N questions (default: all)"})
    corrupted_drafts: int = dataclasses.field(default=2, metadata={
        "help": "corrupted drafts per question, each of a different kind"})
    kinds: str = dataclasses.field(default=",".join(KINDS), metadata={
        "help": "comma-separated corruption kinds to draw from"})
    keep_annotations: float = dataclasses.field(default=0.5, metadata={
        "help": "probability that a draft keeps the <<a*b=c>> calculator annotations as plain text"})
    seed: int = dataclasses.field(default=0, metadata={"help": "random seed (same seed, same data)"})
    workers: int = dataclasses.field(default=2, metadata={"help": "parallel sandbox runs"})


@dataclasses.dataclass
class _Candidate:
    """One question's material before verification."""

    index: int
    solution: Solution
    drafts: list[tuple[str, str, str]]  # (kind, draft text, draft answer); kind "gold" = correct
    wrong_programs: dict[str, str]  # corruption kind -> the program that follows that draft


def build(cfg: DataBuildConfig) -> dict:
    """Write sft.jsonl, dpo.jsonl and report.json under cfg.output_dir; return the report."""
    kinds = [k.strip() for k in cfg.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown corruption kind(s): {', '.join(unknown)} (known: {', '.join(KINDS)})")
    rng = random.Random(cfg.seed)
    report: Counter = Counter()
    candidates = []
    for index, row in enumerate(_read_rows(Path(cfg.input), cfg.limit)):
        report["questions"] += 1
        try:
            solution = parse_solution(row["question"], row["answer"])
        except UnsupportedSolution:
            report["unsupported_solution"] += 1
            continue
        candidates.append(_make_candidate(index, solution, kinds, cfg, rng))

    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        verdicts = list(pool.map(_verify, candidates))

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sft.jsonl", "w") as sft, open(out / "dpo.jsonl", "w") as dpo:
        for candidate, verdict in zip(candidates, verdicts):
            if not verdict["chosen_ok"]:
                report["program_mismatch"] += 1
                continue
            report["verified_questions"] += 1
            for kind, draft, draft_answer in candidate.drafts:
                rejected_kind = kind if kind != "gold" else rng.choice(sorted(candidate.wrong_programs) or [""])
                if kind != "gold" and not verdict["wrong_ok"].get(kind):
                    report["corruption_not_wrong"] += 1
                    continue
                report[f"drafts_{kind}"] += 1
                meta = _meta(candidate, kind, draft, draft_answer)
                sft.write(json.dumps(sft_row(candidate.solution, draft, meta)) + "\n")
                report["sft_rows"] += 1
                if rejected_kind and verdict["wrong_ok"].get(rejected_kind):
                    rejected = candidate.wrong_programs[rejected_kind]
                    dpo.write(json.dumps(dpo_row(candidate.solution, draft, rejected, rejected_kind, meta)) + "\n")
                    report["dpo_rows"] += 1
    report_dict = {"config": dataclasses.asdict(cfg), **dict(sorted(report.items()))}
    (out / "report.json").write_text(json.dumps(report_dict, indent=2) + "\n")
    return report_dict


def sft_row(solution: Solution, draft: str, meta: dict) -> dict:
    """trl's conversational prompt-completion row: CaP prompt -> the correct program."""
    return {
        "prompt": build_messages(solution.question, draft),
        "completion": [{"role": "assistant", "content": format_completion(solution.program())}],
        "meta": meta,
    }


def dpo_row(solution: Solution, draft: str, rejected: str, rejected_kind: str, meta: dict) -> dict:
    """trl's conversational preference row: the correct program over a wrong one."""
    return {
        "prompt": build_messages(solution.question, draft),
        "chosen": [{"role": "assistant", "content": format_completion(solution.program())}],
        "rejected": [{"role": "assistant", "content": format_completion(rejected)}],
        "meta": {**meta, "rejected_kind": rejected_kind},
    }


def _read_rows(path: Path, limit: int | None):
    with open(path) as handle:
        for n, line in enumerate(handle):
            if limit is not None and n >= limit:
                return
            if line.strip():
                yield json.loads(line)


def _make_candidate(index: int, solution: Solution, kinds: list[str], cfg: DataBuildConfig,
                    rng: random.Random) -> _Candidate:
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
    return _Candidate(index, solution, drafts, wrong_programs)


def _verify(candidate: _Candidate) -> dict:
    """Run the correct program and every wrong one; labels come from these runs only."""
    from cap_app.answers import answers_equal
    from cap_app.sandbox import run_program

    gold = candidate.solution.gold
    chosen = run_program(candidate.solution.program(), trace=False)
    wrong_ok = {}
    for kind, program in candidate.wrong_programs.items():
        result = run_program(program, trace=False)
        wrong_ok[kind] = result.ok and result.answer is not None and not answers_equal(result.answer, gold)
    return {"chosen_ok": chosen.ok and chosen.answer is not None and answers_equal(chosen.answer, gold),
            "wrong_ok": wrong_ok}


def _meta(candidate: _Candidate, kind: str, draft: str, draft_answer: str) -> dict:
    return {
        "id": f"gsm8k-train-{candidate.index:05d}-{kind}",
        "question": candidate.solution.question,
        "draft": draft,
        "draft_kind": kind,
        "draft_answer": draft_answer,
        "gold": candidate.solution.gold,
    }
