"""Head plug-ins (see :mod:`components.generator.heads.base`)."""

from components.generator.heads.base import Context, ForwardOutput, Head, Layout

__all__ = ["Context", "ForwardOutput", "Head", "Layout"]
