"""CaP Refinery: refine chain-of-thought math answers by re-solving them with programs.

The folders are the data flow, each using only those listed before it:

- `sandbox/`   runs a model-written program in a restricted, sealed child and traces it.
- `models/`    where weights come from: the Hub or a folder, adapters, 4-bit loading, GGUF files.
- `backends/`  what writes the programs: the contract (`base.py`), one module per backend
               (transformers, llama.cpp, openai), the registry that names them (`registry.py`) and
               the gate that lets interactive refinements go before a batch's (`priority.py`).
- `engine/`    the refinement: checked inputs, strategies, prompts, programs, results, answers,
               the alignment of a draft with a program, and one Reading of a result for the views.
- `annotate/`, `data/`, `train/`  the annotators' store, accounts, exports and background batch
               refinement (Refine all); training data; training.
- `ui/`        the page: per tab a layout module and a handlers module, shared settings, views, charts.
- `commands/`  `python -m cap_app ...`: the same functions the page calls.

Where a new thing goes: a backend is one module in backends/ plus its REGISTRY entry; a sampling
strategy is an entry in engine/strategies.py (and, for a new way of generating, its step in
engine/refine.py); a sandbox rule is
sandbox/policy.py; a tab is ui/<name>_tab.py + ui/<name>_handlers.py plus one line in ui/app.py's
TABS; an export format is one writer plus one FORMATS entry in annotate/export.py.
"""
