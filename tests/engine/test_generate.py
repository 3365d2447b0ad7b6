"""Batched and streamed generation on the tiny random Llama."""

import threading

import pytest
import torch

from cap_app.backends.base import GenerationConfig, repeats_in_tail
from cap_app.backends.transformers import _stopping_and_recording, generate_batch, generate_stream

PROMPTS = ["x = 1", "a much longer prompt, so the batch needs left padding"]


def watch_rows(tokenizer, rows: list[str], config: GenerationConfig | None = None):
    """Feed the stopping rule `rows` token by token, as far as the shortest goes (a random model
    never writes a fence or a loop); returns the rule (finish, lengths), its last done flags and the steps fed."""
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rows]
    steps = min(len(i) for i in ids)
    tokens = torch.tensor([i[:steps] for i in ids])
    watch, _ = _stopping_and_recording(
        tokenizer, len(rows), 0, {tokenizer.eos_token_id}, config or GenerationConfig(), None
    )
    for step in range(1, steps + 1):
        done = watch(tokens[:, :step], None)
    return watch, done.tolist(), steps


def test_batch_returns_n_samples_per_prompt_with_token_counts(tiny_loaded):
    groups = generate_batch(tiny_loaded, PROMPTS, GenerationConfig(max_new_tokens=5, n=3, temperature=1.0))
    assert [len(group) for group in groups] == [3, 3]
    for prompt, group in zip(PROMPTS, groups, strict=True):
        prompt_tokens = len(tiny_loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        for generation in group:
            assert generation.prompt_tokens == prompt_tokens  # padding not counted
            assert generation.new_tokens == 5 and generation.finish == "length"
            assert generation.mean_logprob < 0


def test_left_padded_batch_matches_one_prompt_at_a_time(tiny_loaded):
    config = GenerationConfig(max_new_tokens=8)
    batched = [group[0] for group in generate_batch(tiny_loaded, PROMPTS, config)]
    alone = [generate_batch(tiny_loaded, [prompt], config)[0][0] for prompt in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert [g.mean_logprob for g in batched] == pytest.approx([g.mean_logprob for g in alone], abs=1e-4)


def test_batch_size_splits_rows_without_changing_results(tiny_loaded):
    whole = generate_batch(tiny_loaded, PROMPTS, GenerationConfig(max_new_tokens=4, n=2, batch_size=8))
    split = generate_batch(tiny_loaded, PROMPTS, GenerationConfig(max_new_tokens=4, n=2, batch_size=1))
    assert [[g.text for g in group] for group in whole] == [[g.text for g in group] for group in split]


def test_samples_of_one_prompt_share_its_prefill_and_match_unshared_generation(tiny_loaded):
    """N samples of a prompt run the prompt through the model once, not N times, and the shared
    cache changes nothing: greedy samples equal a lone generation, log-probs included."""
    embedded_tokens = []
    hook = tiny_loaded.model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: embedded_tokens.append(args[0].numel())
    )
    try:
        groups = generate_batch(tiny_loaded, PROMPTS, GenerationConfig(max_new_tokens=6, n=3))
    finally:
        hook.remove()
    padded_len = len(tiny_loaded.tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"])
    # one prefill of both prompts (all but the last token), then one token per row per step
    assert embedded_tokens[0] == 2 * (padded_len - 1)
    assert embedded_tokens[1:] == [6] * 6
    alone = [generate_batch(tiny_loaded, [prompt], GenerationConfig(max_new_tokens=6))[0][0] for prompt in PROMPTS]
    for group, single in zip(groups, alone, strict=True):
        assert [g.text for g in group] == [single.text] * 3
        assert [g.mean_logprob for g in group] == pytest.approx([single.mean_logprob] * 3, abs=1e-4)


def test_seed_makes_sampling_reproducible(tiny_loaded):
    def sample(seed):
        config = GenerationConfig(max_new_tokens=12, n=2, temperature=1.0, top_p=1.0, seed=seed)
        return [g.text for g in generate_batch(tiny_loaded, ["x"], config)[0]]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_mean_logprob_is_the_models_own_probability_of_the_tokens(tiny_loaded):
    """Checked against a teacher-forced forward pass; sampling settings must not distort it."""
    tokenizer, model = tiny_loaded.tokenizer, tiny_loaded.model
    [[generation]] = generate_batch(tiny_loaded, ["y ="], GenerationConfig(max_new_tokens=6, temperature=0.5))
    prompt_ids = tokenizer("y =", add_special_tokens=False, return_tensors="pt")["input_ids"]
    new_ids = torch.tensor([generation.token_ids])
    assert new_ids.shape[1] == generation.new_tokens == 6
    ids = torch.cat([prompt_ids, new_ids], dim=1)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    expected = logprobs[prompt_ids.shape[1] - 1 :].gather(1, new_ids[0].unsqueeze(1)).mean()
    assert generation.mean_logprob == pytest.approx(float(expected), abs=1e-4)


def test_stream_yields_each_rows_text_then_the_generations(tiny_loaded):
    config = GenerationConfig(max_new_tokens=10, n=2, temperature=1.0)
    chunks = list(generate_stream(tiny_loaded, PROMPTS, config))
    final = chunks[-1]
    assert final.row == -1 and [len(g) for g in final.generations] == [2, 2]
    streamed = ["", "", "", ""]
    for chunk in chunks[:-1]:
        streamed[chunk.row] += chunk.text
    assert streamed == [g.text for group in final.generations for g in group]
    counted = {}
    for chunk in chunks[:-1]:
        assert chunk.tokens > counted.get(chunk.row, 0)  # each row's count only grows
        counted[chunk.row] = chunk.tokens
    assert all(counted[row] <= g.new_tokens for row, g in enumerate(g for group in final.generations for g in group))
    assert final.generations == generate_batch(tiny_loaded, PROMPTS, config)  # same seed, same samples


def test_stream_stops_when_cancelled(tiny_loaded):
    cancel = threading.Event()
    stream = generate_stream(tiny_loaded, ["x"], GenerationConfig(max_new_tokens=300), cancel=cancel)
    next(stream)
    cancel.set()
    [[generation]] = list(stream)[-1].generations
    assert generation.finish == "cancelled" and generation.new_tokens < 300


def test_closing_a_stream_early_releases_the_model(tiny_loaded):
    stream = generate_stream(tiny_loaded, ["x"], GenerationConfig(max_new_tokens=300))
    next(stream)
    stream.close()
    assert tiny_loaded.lock.acquire(timeout=30)  # the generation thread stopped and let go
    tiny_loaded.lock.release()


def test_generation_stops_when_the_python_block_closes(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    watch, done, steps = watch_rows(tokenizer, ["```python\nprint(1)\n```\nmore text", "just prose, no fence at all!!"])
    closing = len(tokenizer("```python\nprint(1)\n```", add_special_tokens=False)["input_ids"])
    assert done == [True, False]
    assert (watch.finish, watch.lengths) == (["program_end", "length"], [closing, steps])


@pytest.mark.parametrize(
    ("text", "looping"),
    [
        ("x = 1\nx = 1\nx = 1\n", True),
        ("a = 1\nb = 2\na = 1\nb = 2\na = 1\nb = 2\n", True),  # a two-line block
        ("```python\nt = 3\nprint(t)\nprint(t)\nprint(t)\n", True),
        ("x = 1\nx = 1\nx = 1", False),  # the third line is not complete yet
        ("x = 1\nx = 1\ny = 2\n", False),
        ("a = 1\nb = 2\nc = 3\nprint(c)\n", False),
        ("\n\n\n\n", False),  # blank lines are not a loop
        ("".join(f"eggs_{i + 1} = eggs_{i} + 4\n" for i in range(2, 8)), True),  # counting, six lines
        ("".join(f"eggs_{i + 1} = eggs_{i} + 4\n" for i in range(2, 7)), False),  # five could be a program
        ("a = 3 * 4\nb = 5 * 6\nc = 7 * 8\nd = 1 * 2\ne = 2 * 3\nf = 4 * 5\n", False),  # other names
    ],
)
def test_repeats_in_tail_finds_looping_lines_only(text, looping):
    assert repeats_in_tail(text) is looping


def test_generation_stops_when_lines_repeat(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    rows = ["```python\ns = 1\ns = 1\ns = 1\ns = 1\n", "```python\ns = 1\nt = 2\nu = 3\nv = 4\n"]
    watch, done, _ = watch_rows(tokenizer, rows)
    three_lines = len(tokenizer("```python\ns = 1\ns = 1\ns = 1\n", add_special_tokens=False)["input_ids"])
    assert done == [True, False]
    assert watch.finish == ["repetition", "length"] and watch.lengths[0] == three_lines
    assert watch_rows(tokenizer, rows, GenerationConfig(stop_on_repetition=False))[1] == [False, False]
