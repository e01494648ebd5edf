"""The built-in specialist catalogue: one TOML definition file per role."""
from specialists.loader import Catalogue, load_catalogue

__all__ = ["Catalogue", "load_catalogue"]
