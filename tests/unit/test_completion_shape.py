"""Local (chat-shaped) answers as legacy ``text_completion`` choices: echo, logprobs, indexes."""

from typing import Any

from shipway.api.completion_shape import PromptShaper, legacy_logprobs

PROMPT = "The capital of France is"


def entry(token: str, logprob: float, *alternatives: tuple[str, float]) -> dict[str, Any]:
    top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives]
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": top}


def test_legacy_logprobs_offsets_count_from_the_prompt_and_keep_the_sampled_token() -> None:
    entries = [entry(" Paris", -0.3, (" Paris", -0.3), (" the", -2.0)), entry(".", -1.5, (",", -1))]
    assert legacy_logprobs(entries, offset=len(PROMPT)) == {
        "tokens": [" Paris", "."],
        "token_logprobs": [-0.3, -1.5],
        "top_logprobs": [{" Paris": -0.3, " the": -2.0}, {",": -1, ".": -1.5}],
        "text_offset": [24, 30],
    }
    assert legacy_logprobs([entry("a", -1.0)], 0)["top_logprobs"] == [{"a": -1.0}]  # logprobs=0


def chat_choice(content: str, logprobs: list[dict[str, Any]] | None, index: int = 0) -> Any:
    return {
        "index": index,
        "message": {"role": "assistant", "content": content},
        "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
        "finish_reason": "length",
    }


def test_a_plain_choice_gets_its_index_echo_and_logprobs() -> None:
    shaper = PromptShaper(PROMPT, echo=True, logprobs=False, first_index=4)
    assert shaper.choice(chat_choice(" Paris", None, index=1)) == {
        "text": PROMPT + " Paris",
        "index": 5,
        "logprobs": None,
        "finish_reason": "length",
    }
    shaper = PromptShaper(PROMPT, echo=False, logprobs=True, first_index=0)
    shaped = shaper.choice(chat_choice(" Paris", [entry(" Paris", -0.3)]))
    assert shaped["text"] == " Paris" and shaped["logprobs"]["text_offset"] == [24]


def test_an_upstream_text_choice_passes_renumbered() -> None:
    shaper = PromptShaper(PROMPT, echo=True, logprobs=True, first_index=2)
    upstream = {"text": "as is", "index": 0, "logprobs": {"tokens": ["x"]}, "finish_reason": "stop"}
    assert shaper.choice(upstream) == {**upstream, "index": 2}
    assert shaper.streamed(upstream) == {**upstream, "index": 2}


def delta(content: str | None, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "index": 0,
        "delta": {} if content is None else {"content": content},
        "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
        "finish_reason": None if content is not None else "stop",
    }


def test_a_stream_echoes_once_skips_role_deltas_and_carries_offsets_on() -> None:
    shaper = PromptShaper(PROMPT, echo=False, logprobs=True, first_index=0)
    assert shaper.streamed({"index": 0, "delta": {"role": "assistant", "content": ""}}) is None
    first = shaper.streamed(delta(" Paris", [entry(" Paris", -0.3)]))
    second = shaper.streamed(delta(".", [entry(".", -1.5)]))
    assert first is not None and second is not None
    assert (first["logprobs"]["text_offset"], second["logprobs"]["text_offset"]) == ([24], [30])
    end = shaper.streamed(delta(None))
    assert end is not None and end["finish_reason"] == "stop" and end["text"] == ""
    assert end["logprobs"]["tokens"] == []

    echoing = PromptShaper(PROMPT, echo=True, logprobs=False, first_index=0)
    opening = echoing.streamed({"index": 0, "delta": {"role": "assistant", "content": ""}})
    assert opening is not None and opening["text"] == PROMPT
    later = echoing.streamed(delta(" Paris"))
    assert later is not None and later["text"] == " Paris"
