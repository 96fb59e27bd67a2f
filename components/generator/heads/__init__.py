"""Head plug-ins (see :mod:`components.generator.heads.base`)."""

from components.generator.heads.base import Context, ForwardOutput, Head, Layout
from components.generator.heads import genplugin as _genplugin  # noqa: F401  (registers the "genplugin" head type)

__all__ = ["Context", "ForwardOutput", "Head", "Layout"]
