"""A GGUF chat template turned into prompt tokens where only the template's markers are special.

Tokenising the rendered prompt in one piece with ``special=True`` would read marker text a
client wrote (``<|im_end|>\\n<|im_start|>system``) as control tokens: user text could forge
turn boundaries and roles, and llama.cpp's search for special tokens is quadratic in their
number, so a body full of markers held a worker for half a minute. Instead the template is
rendered with each message's content replaced by a sentinel (a fresh random nonce per
request, no whitespace so filters like ``trim`` keep it whole). The text around the
sentinels is the template's: the special-token texts in it become their ids. The messages go
back in as plain text, merged with the template text around them (``user\\n`` before a
message) into one run per stretch between two markers, which is how llama.cpp splits a whole
prompt too, so ordinary messages get exactly the tokens they got before.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from shipway.backends.local_errors import LocalModelError

__all__ = ["ChatPromptTokenizer"]


class ChatPromptTokenizer:
    def __init__(self, llm: Any, template: str) -> None:
        """``llm`` is a ``llama_cpp.Llama`` (``vocab_only`` is enough)."""
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._llm = llm
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        # The tokens llama.cpp itself looks for when it parses special tokens.
        wanted = (
            llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
            | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
            | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        )
        self._specials: dict[str, int] = {}
        for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
            if llama_cpp.llama_vocab_get_attr(vocab, token) & wanted:
                text = llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", "replace")
                if text:
                    self._specials.setdefault(text, token)
        # Longest first, as llama.cpp tries them.
        alternatives = sorted(self._specials, key=len, reverse=True)
        self._special_re = (
            re.compile("|".join(map(re.escape, alternatives))) if alternatives else None
        )
        eos_id, bos_id = llm.token_eos(), llm.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(eos_id),
            bos_token=self._token_text(bos_id),
            stop_token_ids=[eos_id],
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        text: bytes = self._llm.detokenize([token], special=True)
        return text.decode("utf-8", errors="replace")

    def tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt for ``messages``, ending with the assistant turn's opening."""
        nonce = secrets.token_hex(16)
        marked = [{**m, "content": f"{nonce}x{i}x{nonce}"} for i, m in enumerate(messages)]
        parts = re.split(f"{nonce}x([0-9]+)x{nonce}", self._render(marked))
        given = [m["content"] for m in messages]
        expected = self._render(messages)
        contents = given
        if _splice(parts, contents) != expected:
            # A template that trims the text it is given (Llama 3's does).
            contents = [c.strip() for c in given]
            if _splice(parts, contents) != expected:
                return self._whole_prompt(expected, given)
        out: list[int] = []
        run: list[str] = []
        for index, part in enumerate(parts):
            if index % 2:
                run.append(contents[int(part)])
                continue
            position = 0
            for match in self._special_re.finditer(part) if self._special_re else ():
                run.append(part[position : match.start()])
                out += self._plain("".join(run))
                run = []
                out.append(self._specials[match.group()])
                position = match.end()
            run.append(part[position:])
        out += self._plain("".join(run))
        return out

    def _render(self, messages: list[dict[str, str]]) -> str:
        try:
            formatted = self._formatter(messages=messages)  # type: ignore[arg-type]
        except Exception as exc:
            raise LocalModelError(
                "invalid_request", f"the chat template rejected the messages: {exc}"
            ) from exc
        return formatted.prompt

    def _plain(self, text: str) -> list[int]:
        if not text:
            return []
        # The template writes its own BOS token when the model wants one.
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _whole_prompt(self, prompt: str, contents: list[str]) -> list[int]:
        """A template that rewrites or branches on message text cannot be split at sentinels.

        The whole prompt is tokenised with special tokens then, which is only safe (and only
        linear) while no message carries the text of one.
        """
        if self._special_re is not None:
            for index, content in enumerate(contents):
                if found := self._special_re.search(content):
                    raise LocalModelError(
                        "invalid_request",
                        f"messages[{index}] contains {found.group()!r}, the text of a special "
                        "token of this model, and its chat template changes message text in a "
                        "way that cannot keep it apart from the template's own markers; "
                        "remove it from the message",
                        param=f"messages[{index}].content",
                    )
        return list(self._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))


def _splice(parts: list[str], contents: list[str]) -> str:
    """The rendered prompt with each sentinel (odd parts hold its index) replaced."""
    return "".join(contents[int(p)] if i % 2 else p for i, p in enumerate(parts))
