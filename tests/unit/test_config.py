from pathlib import Path

import pytest

from shipway.config import LlamaCppModel, OpenAIUpstreamModel, load_settings
from shipway.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shipway.yaml"
    path.write_text(text)
    return path


def test_no_config_serves_the_two_embedded_models() -> None:
    settings = load_settings()
    assert list(settings.models) == ["smollm2-135m", "all-minilm-l6-v2"]
    assert settings.server.port == 8700
    assert isinstance(settings.models["smollm2-135m"], LlamaCppModel)


def test_yaml_adds_an_upstream_next_to_the_embedded_models(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
models:
  gpt:
    backend: openai
    base_url: http://127.0.0.1:8000/v1/
    api_key_env: OPENAI_API_KEY
""",
    )
    settings = load_settings(path)
    assert list(settings.models) == ["smollm2-135m", "all-minilm-l6-v2", "gpt"]
    gpt = settings.models["gpt"]
    assert isinstance(gpt, OpenAIUpstreamModel)
    assert gpt.base_url == "http://127.0.0.1:8000/v1"


def test_embedded_models_can_be_switched_off_or_replaced(tmp_path: Path) -> None:
    off = load_settings(_write(tmp_path, "embedded_models: false\n"))
    assert off.models == {}
    replaced = load_settings(
        _write(tmp_path, "models:\n  smollm2-135m: {backend: llamacpp, workers: 3}\n")
    )
    model = replaced.models["smollm2-135m"]
    assert isinstance(model, LlamaCppModel) and model.workers == 3


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("server:\n  prot: 1\n", ["server.prot: unknown key; did you mean `port`?"]),
        (
            "models:\n  x:\n    backend: openai\n    bse_url: http://a\n",
            [
                "models.x.base_url: Field required",
                "models.x.bse_url: unknown key; did you mean `base_url`?",
            ],
        ),
        ("models:\n  x:\n    backend: vllm\n", ["models.x: `backend` must be one of"]),
        (
            "queue:\n  max_waiting: -1\n",
            ["queue.max_waiting: Input should be greater than or equal to 0"],
        ),
        (
            "models:\n  x: {backend: openai, base_url: 'ftp://x'}\n",
            ["models.x.base_url: Value error, must start with http"],
        ),
        (
            "models:\n  x: {backend: openai, base_url: 'http://x', api_key_env: 'sk-abc def'}\n",
            ["models.x.api_key_env: Value error, must be the NAME of an environment variable"],
        ),
        (
            "models:\n  x: {backend: llamacpp, queue: {max_wating: 3}}\n",
            ["models.x.queue.max_wating: unknown key; did you mean `max_waiting`?"],
        ),
        ("- a list\n", ["the top level must be a mapping"]),
        (
            "models:\n  x: {backend: llamacpp, path: /nonexistent/m.gguf}\n",
            ["models.x.path: Value error, no file at /nonexistent/m.gguf"],
        ),
        (
            "models:\n  x: {backend: sentence_transformers, path: /tmp}\n",
            ["models.x.path: Value error, no sentence-transformers model"],
        ),
        ("server: [\n", ["not valid YAML"]),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, yaml_text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, yaml_text))
    for needle in expected:
        assert needle in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.yaml")


def test_source_order_defaults_yaml_env_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, "server:\n  port: 9001\n  host: 0.0.0.0\nqueue:\n  max_waiting: 5\n")
    assert load_settings(path).server.port == 9001
    monkeypatch.setenv("SHIPWAY_SERVER__PORT", "9002")
    monkeypatch.setenv("SHIPWAY_QUEUE__TIMEOUT_S", "7")
    settings = load_settings(path)
    assert settings.server.port == 9002  # env beats YAML
    assert settings.server.host == "0.0.0.0"  # the rest of the YAML section survives
    assert settings.queue.max_waiting == 5 and settings.queue.timeout_s == 7
    flagged = load_settings(path, {"server": {"port": 9003}})
    assert flagged.server.port == 9003  # flags beat env


def test_bad_env_override_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPWAY_SERVER__PORT", "eighty")
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_settings()


def test_per_model_queue_overrides_inherit(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "queue: {max_waiting: 10, timeout_s: 30}\n"
        "models:\n  smollm2-135m: {backend: llamacpp, queue: {timeout_s: 5}}\n",
    )
    settings = load_settings(path)
    resolved = settings.models["smollm2-135m"].queue.resolve(settings.queue)
    assert resolved.max_waiting == 10 and resolved.timeout_s == 5


def test_example_config_is_valid() -> None:
    settings = load_settings(Path(__file__).parents[2] / "examples" / "shipway.yaml")
    assert "gpt-4o-mini" in settings.models


def test_tls_needs_both_files_and_they_must_exist(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not checked here; uvicorn loads it")
    with pytest.raises(ConfigError, match="ssl_certfile and ssl_keyfile go together"):
        load_settings(_write(tmp_path, f"server:\n  ssl_certfile: {cert}\n"))
    missing = tmp_path / "nope.pem"
    text = f"server:\n  ssl_certfile: {cert}\n  ssl_keyfile: {missing}\n"
    with pytest.raises(ConfigError, match=r"server.ssl_keyfile: .*no file at"):
        load_settings(_write(tmp_path, text))


def test_guard_policies_accept_yaml_off_and_name_a_bad_one(tmp_path: Path) -> None:
    # YAML 1.1 reads a bare `off` as false; it must still mean the policy "off".
    path = tmp_path / "shipway.yaml"
    path.write_text(
        "guards: {injection: off, pii: redact}\n"
        "models:\n  up: {backend: openai, base_url: 'http://h/v1', guards: {pii: off}}\n"
    )
    settings = load_settings(path)
    assert settings.guards.injection == "off" and settings.guards.pii == "redact"
    assert settings.models["up"].guards.pii == "off"
    path.write_text("guards: {injection: on}\n")
    with pytest.raises(ConfigError, match=r"guards\.injection"):
        load_settings(path)


def _chat_model(tmp_path: Path, entry: str, alias: str = "smollm2-135m") -> LlamaCppModel:
    model = load_settings(_write(tmp_path, f"models:\n  {alias}: {entry}\n")).models[alias]
    assert isinstance(model, LlamaCppModel)
    return model


def test_the_embedded_chat_model_ships_with_its_recommended_sampling() -> None:
    model = load_settings().models["smollm2-135m"]
    assert isinstance(model, LlamaCppModel)
    assert model.defaults.model_dump(exclude_none=True) == {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 256,
    }


def test_generation_defaults_validate(tmp_path: Path) -> None:
    entry = (
        "{backend: openai, base_url: 'http://h/v1', defaults: {temperature: 0.7, top_p: 1, "
        "max_tokens: 64, stop: '###', frequency_penalty: -1.5, presence_penalty: 2, seed: 7}}"
    )
    model = load_settings(_write(tmp_path, f"models:\n  up: {entry}\n")).models["up"]
    assert isinstance(model, OpenAIUpstreamModel)
    assert model.defaults.stop == ["###"]  # one string, as a request may send it
    assert (model.defaults.temperature, model.defaults.max_tokens) == (0.7, 64)
    assert (model.defaults.frequency_penalty, model.defaults.seed) == (-1.5, 7)
    # An upstream has none unless configured: its server's own defaults apply.
    bare = load_settings(
        _write(tmp_path, "models:\n  up: {backend: openai, base_url: 'http://h'}\n")
    )
    assert bare.models["up"].model_dump()["defaults"] == dict.fromkeys(
        (
            "temperature",
            "top_p",
            "max_tokens",
            "stop",
            "frequency_penalty",
            "presence_penalty",
            "seed",
        )
    )


@pytest.mark.parametrize(
    ("defaults", "expected"),
    [
        ("{temprature: 0.5}", "models.x.defaults.temprature: unknown key; did you mean"),
        ("{temperature: 2.5}", "models.x.defaults.temperature: Input should be less than or"),
        ("{top_p: 0}", "models.x.defaults.top_p: Input should be greater than 0"),
        ("{max_tokens: 0}", "models.x.defaults.max_tokens: Input should be greater than or"),
        ("{stop: [a, b, c, d, e]}", "models.x.defaults.stop: List should have at most 4"),
        ("{stop: ['']}", "models.x.defaults.stop: Value error, a stop sequence must not be"),
        ("{presence_penalty: -3}", "models.x.defaults.presence_penalty: Input should be"),
    ],
)
def test_bad_generation_defaults_name_the_key(tmp_path: Path, defaults: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            _write(tmp_path, f"models:\n  x: {{backend: llamacpp, defaults: {defaults}}}\n")
        )
    assert expected in str(info.value)


def test_an_embedding_model_has_no_generation_defaults(tmp_path: Path) -> None:
    text = "models:\n  e: {backend: sentence_transformers, defaults: {temperature: 0}}\n"
    with pytest.raises(ConfigError, match=r"models\.e\.defaults: unknown key"):
        load_settings(_write(tmp_path, text))


def test_a_default_max_tokens_above_the_model_limit_is_refused(tmp_path: Path) -> None:
    entry = "{backend: llamacpp, max_tokens_limit: 100, defaults: {max_tokens: 200}}"
    with pytest.raises(ConfigError) as info:
        _chat_model(tmp_path, entry, alias="x")
    message = str(info.value)
    assert "models.x:" in message
    assert "defaults.max_tokens (200) is above max_tokens_limit (100)" in message
    assert _chat_model(tmp_path, entry.replace("200", "100"), alias="x").defaults.max_tokens == 100


def test_own_defaults_replace_the_shipped_ones_field_by_field(tmp_path: Path) -> None:
    own = _chat_model(tmp_path, "{backend: llamacpp, defaults: {temperature: 0.7, top_p: null}}")
    assert own.defaults.model_dump(exclude_none=True) == {"temperature": 0.7, "max_tokens": 256}
    # An entry that only changes workers keeps every shipped default.
    kept = _chat_model(tmp_path, "{backend: llamacpp, workers: 2}")
    assert kept.defaults.temperature == 0.2 and kept.workers == 2
    none = _chat_model(tmp_path, "{backend: llamacpp, defaults: null}")
    assert none.defaults.model_dump(exclude_none=True) == {}


def test_the_shipped_max_tokens_yields_to_a_lower_limit(tmp_path: Path) -> None:
    # The user never wrote 256, so their limit must not turn it into a configuration error.
    model = _chat_model(tmp_path, "{backend: llamacpp, max_tokens_limit: 100}")
    assert model.defaults.max_tokens == 100
    # Their own default above their own limit still is one.
    with pytest.raises(ConfigError, match="above max_tokens_limit"):
        _chat_model(
            tmp_path, "{backend: llamacpp, max_tokens_limit: 100, defaults: {max_tokens: 101}}"
        )


def test_another_model_under_the_embedded_name_gets_no_shipped_defaults(tmp_path: Path) -> None:
    gguf = tmp_path / "other.gguf"
    gguf.write_bytes(b"GGUF")
    model = _chat_model(tmp_path, f"{{backend: llamacpp, path: {gguf}}}")
    assert model.defaults.model_dump(exclude_none=True) == {}
    upstream = load_settings(
        _write(tmp_path, "models:\n  smollm2-135m: {backend: openai, base_url: 'http://h/v1'}\n")
    ).models["smollm2-135m"]
    assert isinstance(upstream, OpenAIUpstreamModel)
    assert upstream.defaults.model_dump(exclude_none=True) == {}
