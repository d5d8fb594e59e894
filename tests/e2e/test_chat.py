"""Chat completions against the real embedded SmolLM2 model, through the official client."""

import httpx
import openai
from tests.e2e.conftest import CHAT
from tests.support.servers import Server

MESSAGES = [{"role": "user", "content": "Name three colours."}]


def test_plain_chat_has_openai_shape_and_exact_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT, messages=MESSAGES, max_tokens=12, temperature=0
    )
    assert reply.object == "chat.completion"
    assert reply.model == CHAT
    assert reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 12


def test_prompt_tokens_match_an_independent_count(client: openai.OpenAI) -> None:
    """Count the tokens of SmolLM2's chat format with the model's own tokenizer."""
    from llama_cpp import Llama

    from shipway.backends.model_files import embedded_chat_model_path

    vocab = Llama(str(embedded_chat_model_path()), vocab_only=True, verbose=False)
    for text in ("Name three colours.", "Name three colours. " * 5, "Ünïcödé ✓ 日本語"):
        prompt = (
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            f"Face<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
        )
        expected = len(vocab.tokenize(prompt.encode(), add_bos=False, special=True))
        reply = client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": text}], max_tokens=1
        )
        assert reply.usage is not None and reply.usage.prompt_tokens == expected


def test_greedy_with_seed_is_reproducible(client: openai.OpenAI) -> None:
    kwargs = {"model": CHAT, "messages": MESSAGES, "max_tokens": 16, "temperature": 0.8, "seed": 7}
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    second = client.chat.completions.create(**kwargs).choices[0].message.content
    assert first == second


def test_streaming_matches_non_streaming_and_reports_usage(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model=CHAT, messages=MESSAGES, max_tokens=20, temperature=0
    )
    stream = client.chat.completions.create(
        model=CHAT,
        messages=MESSAGES,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [plain.choices[0].finish_reason]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == plain.usage.completion_tokens  # type: ignore[union-attr]
    assert usage_chunk.usage.prompt_tokens == plain.usage.prompt_tokens  # type: ignore[union-attr]


def test_stream_without_include_usage_has_no_usage_chunk(server: Server) -> None:
    body = {"model": CHAT, "messages": MESSAGES, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", server.base + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"]
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all('"usage"' not in e for e in events[:-1])


def test_max_completion_tokens_and_stop(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT, messages=MESSAGES, max_completion_tokens=3, temperature=0
    )
    assert reply.usage and reply.usage.completion_tokens == 3
    assert reply.choices[0].finish_reason == "length"
    full = client.chat.completions.create(
        model=CHAT, messages=MESSAGES, max_tokens=30, temperature=0
    )
    text = full.choices[0].message.content or ""
    words = text.split()
    assert len(words) >= 3
    stop_word = words[2]
    cut = client.chat.completions.create(
        model=CHAT, messages=MESSAGES, max_tokens=30, temperature=0, stop=[stop_word]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop_word)]


def test_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT, messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == reply.usage.completion_tokens  # type: ignore[union-attr]
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # Greedy decoding picks the most likely token.
        assert entry.logprob == max(t.logprob for t in entry.top_logprobs)
    assert "".join(e.token for e in content) == reply.choices[0].message.content


def test_system_and_multi_turn_messages(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT,
        messages=[
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "Colour of the sky?"}]},
        ],
        max_tokens=5,
    )
    assert reply.usage and reply.usage.prompt_tokens > 20
