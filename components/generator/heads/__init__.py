"""Head plug-ins (see :mod:`components.generator.heads.base`)."""

from components.generator.heads.base import Context, ForwardOutput, Head, Layout
from components.generator.heads import genplugin as _genplugin  # noqa: F401  (registers the "genplugin" head type)
from components.generator.heads import care  # noqa: F401,E402  (registers the "care" head type)

__all__ = ["Context", "ForwardOutput", "Head", "Layout"]
