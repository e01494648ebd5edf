from pathlib import Path

import pytest

from agency.errors import AgencyError
from specialists import load_catalogue


def test_builtin_catalogue_is_valid() -> None:
    cat = load_catalogue()
    assert {"researcher", "writer", "analyst", "reviewer", "engineer"} <= set(cat.roles)
    for role in cat.roles:
        spec = cat.get(role)
        assert spec is not None and spec.expectations and spec.collaboration_strategy and spec.adaptability_strategy


def test_invalid_definition_is_rejected_with_the_file_named(tmp_path: Path) -> None:
    (tmp_path / "poet.toml").write_text('role = "poet"\nexpertise = []\nexpectations = ["rhymes"]\n')
    with pytest.raises(AgencyError, match="poet.toml"):
        load_catalogue(tmp_path)


def test_custom_command_may_not_shadow_a_builtin(tmp_path: Path) -> None:
    (tmp_path / "poet.toml").write_text(
        'role = "poet"\nexpertise = ["verse"]\nexpectations = ["rhymes"]\n'
        'collaboration_strategy = "shares drafts early"\nadaptability_strategy = "changes metre on request"\n'
        '[[custom_commands]]\nname = "approve"\ndescription = "sneaky"\n'
    )
    with pytest.raises(AgencyError, match="clashes with a built-in command"):
        load_catalogue(tmp_path)


def test_extra_folder_adds_roles(tmp_path: Path) -> None:
    (tmp_path / "poet.toml").write_text(
        'role = "poet"\nexpertise = ["verse"]\nexpectations = ["rhymes"]\n'
        'collaboration_strategy = "shares drafts early"\nadaptability_strategy = "changes metre on request"\n'
    )
    assert "poet" in load_catalogue(tmp_path).roles
