"""Execution-verified self-training data: the model's own programs on train prompts, labelled by running them.

The fixed preference pairs of the faithful recipe (recompute vs copy a slip) teach a lesson the SFT
model already knows. What costs it right drafts are its own slips of transcription: a step that
names the wrong earlier result, swapped operands, an intermediate printed as the answer. Those
only show up in its own samples, so they are the rejected side here:

1. `data onpolicy-prompts` picks prompts from a faithful SFT file (seeded) and writes them as a
   `refine --input` batch ({id, question, draft, gold}); `refine --strategy vote --n 4` then
   samples programs with the fastest backend, resumably.
2. `data onpolicy-pairs` joins the refined results back to their rows: every distinct sampled
   program that ran to a wrong answer, printed none or failed is rejected against the row's
   verified faithful program (chosen); sampled programs that printed the gold answer are kept as
   self-training SFT rows.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from pathlib import Path

from cap_app.engine.answers import answers_equal
from cap_app.engine.results import RefinementResult


@dataclasses.dataclass
class OnPolicyPromptsConfig:
    sft: str = dataclasses.field(
        default="runs/data-faithful/sft.jsonl",
        metadata={"help": "faithful SFT rows (data faithful's sft.jsonl) whose prompts are sampled"},
    )
    output: str = dataclasses.field(
        default="runs/onpolicy/prompts.jsonl", metadata={"help": "the refine batch input to write"}
    )
    limit: int = dataclasses.field(default=1000, metadata={"help": "prompts to pick"})
    kinds: str = dataclasses.field(
        default="right,plain",
        metadata={"help": "draft kinds to pick from (right, plain, slip, plain_slip), comma-separated"},
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "random seed of the pick"})


@dataclasses.dataclass
class OnPolicyPairsConfig:
    sft: str = dataclasses.field(
        default="runs/data-faithful/sft.jsonl",
        metadata={"help": "the faithful SFT rows the prompts came from (their programs are the chosen side)"},
    )
    refined: str = dataclasses.field(
        default="runs/onpolicy/refined.jsonl",
        metadata={"help": "refine's output for the prompts (--strategy vote, several programs per prompt)"},
    )
    output_dir: str = dataclasses.field(
        default="runs/onpolicy", metadata={"help": "folder for dpo.jsonl, sft.jsonl and report.json"}
    )
    max_pairs_per_prompt: int = dataclasses.field(
        default=2, metadata={"help": "most rejected programs per prompt (distinct programs, wrong answers first)"}
    )


def read_jsonl(path: str) -> list[dict]:
    if not Path(path).is_file():
        raise ValueError(f"no file at {path}")
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_prompts(cfg: OnPolicyPromptsConfig) -> int:
    """Write cfg.limit prompts of the chosen kinds as a refine batch; returns how many."""
    kinds = {kind.strip() for kind in cfg.kinds.split(",") if kind.strip()}
    rows = [row for row in read_jsonl(cfg.sft) if row["meta"].get("draft_kind") in kinds]
    if not rows:
        raise ValueError(f"{cfg.sft} has no rows of kind {', '.join(sorted(kinds))}")
    # a seeded order of all the rows, cut at the limit: a larger --limit extends a smaller one's prompts
    picked = random.Random(cfg.seed).sample(rows, len(rows))[: cfg.limit]
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    with open(cfg.output, "w") as out:
        for row in picked:
            meta = row["meta"]
            out.write(
                json.dumps(
                    {"id": meta["id"], "question": meta["question"], "draft": meta["draft"], "gold": meta["gold"]}
                )
                + "\n"
            )
    return len(picked)


def _failure(candidate, gold: str) -> str | None:
    """Why a sampled program is wrong ('wrong_answer', 'no_answer', 'error'), or None when it is right."""
    if candidate.answer is not None:
        return None if answers_equal(candidate.answer, gold) else "wrong_answer"
    return "no_answer" if candidate.execution.ok else "error"


def build_pairs(cfg: OnPolicyPairsConfig) -> dict:
    """Write dpo.jsonl (faithful program over the model's wrong ones) and sft.jsonl (its right ones)."""
    from cap_app.data.build import dpo_row, sft_row
    from cap_app.engine.program import extract_program

    by_id = {row["meta"]["id"]: row for row in read_jsonl(cfg.sft)}
    report: Counter = Counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = {"wrong_answer": 0, "no_answer": 1, "error": 2}
    with open(out / "dpo.jsonl", "w") as dpo, open(out / "sft.jsonl", "w") as sft:
        for record in read_jsonl(cfg.refined):
            row = by_id.get(record.get("id"))
            if row is None:
                report["results_without_row"] += 1
                continue
            result = RefinementResult.from_dict({k: v for k, v in record.items() if k != "id"})
            meta = row["meta"]
            chosen = extract_program(row["completion"][-1]["content"])
            report["prompts"] += 1
            wrong, right = {}, set()
            for candidate in result.candidates:
                report["samples"] += 1
                failure = _failure(candidate, meta["gold"])
                report[f"samples_{failure or 'right'}"] += 1
                if failure is None:
                    right.add(candidate.program)
                elif candidate.program.strip() and candidate.program != chosen:
                    wrong.setdefault(candidate.program, failure)
            report[f"prompts_{meta['draft_kind']}_{'all_right' if not wrong else 'some_wrong'}"] += 1
            for program in sorted(right):
                sft.write(json.dumps(sft_row(meta, program, "sampled")) + "\n")
                report["sft_rows"] += 1
            ranked = sorted(wrong.items(), key=lambda item: order[item[1]])[: cfg.max_pairs_per_prompt]
            for program, failure in ranked:
                dpo.write(json.dumps(dpo_row(meta, (chosen, "faithful"), (program, "sampled", failure))) + "\n")
                report["dpo_rows"] += 1
                report[f"dpo_rejected_{failure}"] += 1
    summary = {"config": dataclasses.asdict(cfg), **dict(sorted(report.items()))}
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
