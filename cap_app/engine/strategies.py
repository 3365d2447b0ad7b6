"""The sampling strategies and the override rule: the one list that the engine, the CLI's choices
and help, and the page's choices read. A new strategy is one entry here (and, when it needs a way
of generating that the flags below do not describe, its step in cap_app.engine.refine)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str
    help: str  # one clause, for the CLI's help and the page
    samples: bool = False  # N sampled programs (temperature, top-p) and a vote among their answers
    draft_votes: bool = False  # the draft's own answer counts as one more vote
    repairs: bool = False  # a failing program's error goes back to the model, for up to `repair_rounds` more tries


STRATEGIES = {
    strategy.name: strategy
    for strategy in (
        Strategy("greedy", "one program"),
        Strategy("vote", "majority of N sampled programs", samples=True),
        Strategy("cot+cap", "vote with the draft's answer as one more vote", samples=True, draft_votes=True),
        Strategy("repair", "feed errors back to the model", repairs=True),
    )
}
STRATEGY_HELP = "; ".join(f"{s.name}: {s.help}" for s in STRATEGIES.values())

# when a program's answer replaces the draft's (RefineConfig.override) -> what it means
OVERRIDES = {
    "located": "a program's answer replaces a draft's other answer only when the program recomputes a calculation "
    "the draft got wrong or uses a quantity the draft left out; otherwise the draft's answer stands, unconfirmed "
    "(or unverified when no program answers)",
    "always": "a program's answer always replaces the draft's (the paper's CaP)",
}
OVERRIDE_HELP = ". ".join(f"{name}: {meaning}" for name, meaning in OVERRIDES.items())
