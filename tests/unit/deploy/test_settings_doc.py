"""docs/settings.md lists every setting the services read, exactly as their settings classes
define them (``python -m tests.settings_table --write`` regenerates the list)."""

from __future__ import annotations

from services.core.settings import Settings
from tests.settings_table import DOC, FACTORY_DEFAULTS, SERVICES, doc_copy, own_fields, render


def test_the_docs_list_the_settings_as_the_code_defines_them() -> None:
    copy = doc_copy(DOC.read_text())
    assert copy is not None, "docs/settings.md lost its generated settings block"
    assert copy == render(), "run `python -m tests.settings_table --write`"


def test_every_setting_is_described_and_every_computed_default_worded() -> None:
    classes: list[type[Settings]] = [Settings, *(cls for _, cls in SERVICES.values())]
    for cls in classes:
        for name, field in own_fields(cls).items():
            assert field.description, f"{cls.__name__}.{name} has no description"
            if field.default_factory is not None:
                assert (cls, name) in FACTORY_DEFAULTS, f"{cls.__name__}.{name}"
