from pathlib import Path

from pydantic import BaseModel

from shipway import config
from shipway.config_docs import render

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_configuration_reference_is_in_step_with_the_settings() -> None:
    assert DOC.read_text() == render(), "docs/configuration.md is stale: run `make docs`"


def test_every_setting_is_documented() -> None:
    for name in dir(config):
        model = getattr(config, name)
        if (
            isinstance(model, type)
            and issubclass(model, BaseModel)
            and model.__module__ == config.__name__
        ):
            for field_name, field in model.model_fields.items():
                if field_name != "backend":
                    assert field.description, f"{name}.{field_name} has no description"
