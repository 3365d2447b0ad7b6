"""Build the *faithful* CaP training set from GSM8K train: drafts a small model can learn to refine.

Each train question's gold solution is a right draft. Every prompt draws one of four draft kinds
(`--kinds`): the draft with its calculator annotations (`right`), without them (`plain`), and
each of those with one arithmetic slip that the rest of the draft builds on (`slip`,
`plain_slip`; see variants.py). The target is always the program that recomputes the draft's
own steps (faithful.py), taken from the annotated text, so a plain draft teaches the model to
pull `80 * 8` out of "80 spiders * 8 legs/spider = 640 legs", and a slip teaches it to write
`legs = spiders * 8` instead of the slipped number. A row is kept only when its program, run in
the sandbox, prints the gold answer. The rejected program of each preference row *copies* the
draft: the same steps with every stated result as a literal, i.e. it trusts the slip.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cap_app.data.corrupt import FINAL_STYLES
from cap_app.data.faithful import computations, faithful_program
from cap_app.data.variants import plain_draft, slip_draft
from cap_app.engine.answers import answers_equal, extract_draft_answer

KINDS = ("right", "plain", "slip", "plain_slip")


@dataclasses.dataclass
class FaithfulBuildConfig:
    input: str = dataclasses.field(
        default="data/gsm8k/train.jsonl",
        metadata={"help": "GSM8K-style JSONL with question and answer (never the dev drafts or the test set)"},
    )
    output_dir: str = dataclasses.field(
        default="runs/data-faithful", metadata={"help": "folder for sft.jsonl, dpo.jsonl and report.json"}
    )
    limit: int | None = dataclasses.field(default=None, metadata={"help": "use only the first N questions"})
    kinds: str = dataclasses.field(
        default="right:3,plain:3,slip:2,plain_slip:2",
        metadata={"help": "draft kinds and their weights, e.g. 'right:1,slip:1'; one kind is drawn per prompt"},
    )
    prompts_per_question: int = dataclasses.field(
        default=1, metadata={"help": "prompts per question, each with a freshly drawn kind"}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "random seed (same seed, same data)"})
    workers: int = dataclasses.field(default=2, metadata={"help": "parallel sandbox runs"})


def parse_kinds(text: str) -> dict[str, float]:
    """'right:3,slip:1' -> {'right': 3.0, 'slip': 1.0}; ValueError with the reason otherwise."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition(":")
        if name not in KINDS:
            raise ValueError(f"unknown draft kind {name!r} (known: {', '.join(KINDS)})")
        try:
            weights[name] = float(weight or 1)
        except ValueError:
            raise ValueError(f"weight of {name!r} must be a number, not {weight!r}") from None
    if not weights or sum(weights.values()) <= 0:
        raise ValueError("--kinds needs at least one kind with a positive weight")
    return weights


def gsm8k_draft(answer: str, final_style: str) -> tuple[str, str]:
    """A GSM8K train answer as a draft (`#### 18` -> the chosen final line) and its gold answer."""
    body, _, gold = answer.rpartition("####")
    gold = gold.strip().replace(",", "")
    return body.rstrip("\n") + "\n" + final_style.format(gold), gold


def make_draft(answer: str, kind: str, rng: random.Random) -> tuple[str, str, str] | None:
    """(draft the model sees, annotated draft the target comes from, gold) of one kind, or None."""
    annotated, gold = gsm8k_draft(answer, rng.choice(FINAL_STYLES))
    if kind in ("slip", "plain_slip"):
        slipped = slip_draft(annotated, gold, rng)
        if slipped is None:
            return None
        annotated = slipped[0]
    shown = plain_draft(annotated) if kind.startswith("plain") else annotated
    return shown, annotated, gold


def copying_program(annotated: str) -> str | None:
    """The program that trusts the draft: its steps with earlier results written as the stated numbers."""
    lines = []
    for number, step in enumerate(computations(annotated), 1):
        lines.append(f"step_{number} = {step.stated}")
    return "\n".join(lines + [f"print(step_{len(lines)})"]) + "\n" if lines else None


def build_faithful(cfg: FaithfulBuildConfig) -> dict:
    """Write sft.jsonl, dpo.jsonl and report.json under cfg.output_dir; return the report."""
    from cap_app.data.build import dpo_row, sft_row
    from cap_app.sandbox import run_program

    weights = parse_kinds(cfg.kinds)
    rng = random.Random(cfg.seed)
    report: Counter = Counter()
    prompts = []
    with open(cfg.input) as handle:
        for index, line in enumerate(handle):
            if cfg.limit is not None and index >= cfg.limit:
                break
            row = json.loads(line)
            report["questions"] += 1
            for copy in range(cfg.prompts_per_question):
                kind = rng.choices(list(weights), weights=list(weights.values()))[0]
                made = make_draft(row["answer"], kind, rng)
                program = faithful_program(made[1]) if made else None
                if program is None:
                    report[f"{kind}_not_built"] += 1
                    continue
                shown, annotated, gold = made
                meta = {
                    "id": f"gsm8k-train-{index:05d}-{copy}-{kind}",
                    "question": row["question"],
                    "draft": shown,
                    "draft_kind": kind,
                    "draft_answer": extract_draft_answer(shown),
                    "gold": gold,
                }
                meta["draft_correct"] = answers_equal(meta["draft_answer"], gold)
                prompts.append((meta, program, copying_program(annotated)))

    def verified(item):
        meta, program, copying = item
        chosen = run_program(program, trace=False)
        wrong = run_program(copying, trace=False) if copying else None
        return (
            chosen.ok and answers_equal(chosen.answer, meta["gold"]),
            wrong is not None and wrong.ok and not answers_equal(wrong.answer, meta["gold"]),
        )

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (
        ThreadPoolExecutor(max(1, cfg.workers)) as pool,
        open(out / "sft.jsonl", "w") as sft,
        open(out / "dpo.jsonl", "w") as dpo,
    ):
        for (meta, program, copying), (chosen_ok, copying_wrong) in zip(
            prompts, pool.map(verified, prompts), strict=True
        ):
            if not chosen_ok:
                report[f"{meta['draft_kind']}_not_gold"] += 1
                continue
            report[f"sft_{meta['draft_kind']}"] += 1
            report["sft_rows"] += 1
            sft.write(json.dumps(sft_row(meta, program, "faithful")) + "\n")
            if copying_wrong:
                report["dpo_rows"] += 1
                dpo.write(json.dumps(dpo_row(meta, (program, "faithful"), (copying, "copying", "copies_slip"))) + "\n")
    report_dict = {"config": dataclasses.asdict(cfg), **dict(sorted(report.items()))}
    (out / "report.json").write_text(json.dumps(report_dict, indent=2) + "\n")
    return report_dict
