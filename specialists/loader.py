"""Load and validate the specialist definitions (``specialists/*.toml``)."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from agency.errors import AgencyError
from agency.schemas import SpecialistDefinition

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Catalogue:
    specs: dict[str, SpecialistDefinition]

    def get(self, role: str) -> SpecialistDefinition | None:
        return self.specs.get(role.strip().lower())

    @property
    def roles(self) -> list[str]:
        return sorted(self.specs)

    def describe(self) -> str:
        return "\n".join(f"- {r}: {', '.join(s.expertise[:4])}" for r, s in sorted(self.specs.items()))


def load_definition(path: Path) -> SpecialistDefinition:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        spec = SpecialistDefinition.model_validate(data)
    except (tomllib.TOMLDecodeError, ValidationError) as e:
        raise AgencyError(f"Specialist definition {path.name} is invalid: {e}") from e
    if spec.role != path.stem:
        raise AgencyError(f"Specialist definition {path.name} declares role {spec.role!r}; the file name must match the role.")
    return spec


def load_catalogue(*dirs: Path) -> Catalogue:
    """The built-in catalogue, plus any extra folders (later ones override)."""
    specs: dict[str, SpecialistDefinition] = {}
    for d in (HERE, *dirs):
        for p in sorted(Path(d).glob("*.toml")):
            spec = load_definition(p)
            specs[spec.role] = spec
    return Catalogue(specs)
