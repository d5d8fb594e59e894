"""Per-request prompt caps: the smaller of the model's and the key's, a 400 naming it."""

from __future__ import annotations

import pytest

from shipway.costs.request_caps import check_prompt_tokens
from shipway.errors import InvalidRequest


def test_no_cap_or_a_prompt_within_it_passes() -> None:
    check_prompt_tokens(10**9, model_limit=None, key_limit=None, model="m")
    check_prompt_tokens(4096, model_limit=4096, key_limit=None, model="m")
    check_prompt_tokens(100, model_limit=4096, key_limit=100, model="m")


def test_the_model_cap_refuses_a_longer_prompt_naming_its_setting() -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_prompt_tokens(5000, model_limit=4096, key_limit=8000, model="big")
    error = refused.value
    assert (error.status, error.code, error.param) == (400, "prompt_too_long", "messages")
    assert "5,000 tokens" in error.message and "4,096" in error.message
    assert "`models.big.max_prompt_tokens`" in error.message


def test_the_key_cap_applies_when_it_is_the_smaller_one() -> None:
    with pytest.raises(InvalidRequest, match="this API key may send is 1,000 tokens") as refused:
        check_prompt_tokens(1001, model_limit=4096, key_limit=1000, model="big", param="input")
    assert refused.value.param == "input"
