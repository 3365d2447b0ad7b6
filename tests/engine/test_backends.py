"""The backend seam: which backend `auto` picks, what each refuses, and the sampling loop the
llama.cpp and openai backends share (driven here by a scripted token source)."""

import threading

import pytest

import cap_app.backends.registry
from cap_app.backends import BackendConfig, BackendError, get_backend, resolve_backend
from cap_app.backends.base import GenerationConfig, RowSampler, Token, follow
from cap_app.commands.common import load_for_command
from cap_app.engine.inputs import RefineItem
from cap_app.engine.refine import RefineConfig, refine, refine_stream
from cap_app.models.loading import ModelConfig

PROGRAM = "```python\nprint(18)\n```"
QUESTION = "Janet has 9 eggs and sells them at $2 each. How much does she make?"


def tokens(text: str, logprob: float = -0.5, eos: bool = True):
    """`text` one character per token, then EOS."""
    yield from (Token(c, logprob) for c in text)
    if eos:
        yield Token("", None, eos=True)


def test_follow_stops_at_the_closing_fence_and_keeps_the_mean_logprob():
    generation = follow(
        tokens(PROGRAM + "\nand some chatter"), GenerationConfig(), prompt_tokens=7, cancel=None, emit=None
    )
    assert (generation.text, generation.finish, generation.prompt_tokens) == (PROGRAM, "program_end", 7)
    assert generation.new_tokens == len(PROGRAM) and generation.mean_logprob == pytest.approx(-0.5)


def test_follow_stops_a_loop_at_eos_and_at_the_limit():
    loop = "```python\n" + "x = 1\n" * 10
    assert follow(tokens(loop), GenerationConfig(), prompt_tokens=0, cancel=None, emit=None).finish == "repetition"
    assert follow(tokens("```python\nx"), GenerationConfig(), prompt_tokens=0, cancel=None, emit=None).finish == "eos"
    cut = follow(tokens(PROGRAM), GenerationConfig(max_new_tokens=5), prompt_tokens=0, cancel=None, emit=None)
    assert (cut.text, cut.finish, cut.new_tokens) == (PROGRAM[:5], "length", 5)


def test_follow_closes_the_token_source_when_it_stops():
    closed = []

    def source():
        try:
            yield from tokens(PROGRAM + "more")
        finally:
            closed.append(True)

    follow(source(), GenerationConfig(), prompt_tokens=0, cancel=None, emit=None)
    assert closed == [True]  # a remote stream's connection is dropped, a local decoder stops


def test_follow_stops_when_cancelled():
    cancel = threading.Event()
    cancel.set()
    generation = follow(tokens(PROGRAM), GenerationConfig(), prompt_tokens=0, cancel=cancel, emit=None)
    assert (generation.finish, generation.new_tokens) == ("cancelled", 1)


def test_follow_without_logprobs_for_every_token_reports_none():
    mixed = [Token("a", -1.0), Token("b", None), Token("", None, eos=True)]
    assert follow(mixed, GenerationConfig(), prompt_tokens=0, cancel=None, emit=None).mean_logprob is None


class Scripted(RowSampler):
    """Writes PROGRAM with the seed as its answer, so tests see which seed each row got."""

    name = "scripted"
    description = "scripted"

    def __init__(self, concurrency=1):
        self.concurrency = concurrency
        self.seen = []

    def sample(self, conversation, config, seed, cancel, emit):
        self.seen.append((conversation[-1]["content"], seed))
        text = PROGRAM.replace("18", str(seed))
        return follow(tokens(text), config, prompt_tokens=3, cancel=cancel, emit=emit)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_rows_are_seeded_in_order_and_grouped_per_conversation(concurrency):
    backend = Scripted(concurrency)
    conversations = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    groups = backend.generate_batch(conversations, GenerationConfig(n=3, seed=10))
    assert [[g.text for g in group] for group in groups] == [
        [PROGRAM.replace("18", str(s)) for s in (10, 11, 12)],
        [PROGRAM.replace("18", str(s)) for s in (13, 14, 15)],
    ]
    assert sorted(backend.seen) == [("a", 10), ("a", 11), ("a", 12), ("b", 13), ("b", 14), ("b", 15)]


def test_stream_yields_each_rows_text_then_all_generations():
    chunks = list(Scripted().generate_stream([[{"role": "user", "content": "a"}]], GenerationConfig(n=2, seed=0)))
    by_row = {}
    for chunk in chunks[:-1]:
        by_row[chunk.row] = by_row.get(chunk.row, "") + chunk.text
    assert by_row == {0: PROGRAM.replace("18", "0"), 1: PROGRAM.replace("18", "1")}
    assert chunks[-1].row == -1 and [g.finish for g in chunks[-1].generations[0]] == ["program_end"] * 2


def test_the_engine_votes_and_cancels_through_a_backend():
    result = refine(QUESTION, "A: 18", config=RefineConfig(strategy="vote", n=3, seed=18), backend=Scripted())
    assert result.votes == {"18": 1, "19": 1, "20": 1} and result.model == "scripted"
    cancel = threading.Event()
    events = refine_stream(RefineItem(QUESTION, "A: 18"), backend=Scripted(), cancel=cancel)
    assert next(events).kind == "prompt"
    first = next(events)
    cancel.set()
    assert first.kind == "token" and {e.kind for e in events} <= {"token"}  # no program run, no result


def test_auto_picks_by_environment_url_and_model_file(monkeypatch, tiny_model_dir):
    monkeypatch.delenv("CAP_BACKEND", raising=False)
    monkeypatch.setattr(cap_app.backends.registry, "has_cuda", lambda: False)
    assert resolve_backend(ModelConfig(), BackendConfig()) == "llama.cpp"  # the offline default is a .gguf
    assert resolve_backend(ModelConfig(model=tiny_model_dir), BackendConfig()) == "transformers"
    assert resolve_backend(ModelConfig(), BackendConfig(base_url="http://127.0.0.1:1/v1")) == "openai"
    monkeypatch.setattr(cap_app.backends.registry, "has_cuda", lambda: True)
    assert resolve_backend(ModelConfig(), BackendConfig()) == "transformers"
    monkeypatch.setenv("CAP_BACKEND", "openai")
    assert resolve_backend(ModelConfig(), BackendConfig()) == "openai"
    assert resolve_backend(ModelConfig(), BackendConfig(backend="llama.cpp")) == "llama.cpp"  # the flag wins
    monkeypatch.setenv("CAP_BACKEND", "vllm")
    with pytest.raises(BackendError, match="CAP_BACKEND='vllm' is not a backend"):
        resolve_backend(ModelConfig(), BackendConfig())


@pytest.mark.parametrize(
    ("model_cfg", "backend_cfg", "message"),
    [
        (
            ModelConfig(quantization="4bit"),
            BackendConfig(backend="llama.cpp"),
            "--quantization applies to the transformers backend only; "
            "llama.cpp runs the model as its file or server has it",
        ),
        (
            ModelConfig(device="cuda"),
            BackendConfig(backend="openai", base_url="http://127.0.0.1:1/v1"),
            "--device applies to the transformers backend only; openai runs the model as its file or server has it",
        ),
        (
            ModelConfig(),
            BackendConfig(backend="openai"),
            "the openai backend needs --base-url, e.g. http://127.0.0.1:8000/v1",
        ),
        (
            ModelConfig(adapter="some/adapter"),
            BackendConfig(backend="openai", base_url="http://127.0.0.1:1/v1"),
            "--adapter does not apply to the openai backend: the server's model is used as it is",
        ),
        (
            ModelConfig(),
            BackendConfig(backend="llama.cpp", base_url="http://127.0.0.1:1/v1"),
            "--base-url is for the openai backend; the llama.cpp backend runs the model in this process",
        ),
        (
            ModelConfig(),
            BackendConfig(backend="transformers", contexts=2),
            "--contexts is for the llama.cpp backend; the transformers backend does not use it",
        ),
        (
            ModelConfig(),
            BackendConfig(backend="openai", base_url="http://127.0.0.1:1/v1", contexts=2),
            "--contexts is for the llama.cpp backend; the openai backend does not use it",
        ),
    ],
)
def test_settings_a_backend_cannot_honour_are_refused(model_cfg, backend_cfg, message):
    with pytest.raises(BackendError) as error:
        get_backend(model_cfg, backend_cfg)
    assert str(error.value) == message


def test_llama_cpp_refuses_a_model_that_is_not_a_gguf_file(tiny_model_dir):
    with pytest.raises(BackendError, match="the llama.cpp backend needs a .gguf model file; '.*' is not one"):
        get_backend(ModelConfig(model=tiny_model_dir), BackendConfig(backend="llama.cpp"))


def test_the_command_line_reports_a_refused_backend_in_one_line(capsys):
    from cap_app.cli import make_parser

    args = make_parser().parse_args(["refine", "--question", "q", "--backend", "openai"])
    assert load_for_command(args) is None
    assert capsys.readouterr().err == "error: the openai backend needs --base-url, e.g. http://127.0.0.1:8000/v1\n"
