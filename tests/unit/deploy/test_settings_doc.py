"""The README lists every setting the services read, exactly as their settings classes define
them (``python -m tests.settings_table --write`` regenerates the list)."""

from __future__ import annotations

from services.core.settings import Settings
from tests.settings_table import FACTORY_DEFAULTS, README, SERVICES, own_fields, readme_copy, render


def test_the_readme_lists_the_settings_as_the_code_defines_them() -> None:
    copy = readme_copy(README.read_text())
    assert copy is not None, "README.md lost its generated settings block"
    assert copy == render(), "run `python -m tests.settings_table --write`"


def test_every_setting_is_described_and_every_computed_default_worded() -> None:
    classes: list[type[Settings]] = [Settings, *(cls for _, cls in SERVICES.values())]
    for cls in classes:
        for name, field in own_fields(cls).items():
            assert field.description, f"{cls.__name__}.{name} has no description"
            if field.default_factory is not None:
                assert (cls, name) in FACTORY_DEFAULTS, f"{cls.__name__}.{name}"
