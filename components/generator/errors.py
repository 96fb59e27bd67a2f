"""Errors of the generator component (all ValueErrors: the CLI prints them as one line)."""


class GeneratorError(ValueError):
    """Bad input to the generator: unknown items, impossible k / beam, incompatible artifacts."""


class UnknownItemsError(GeneratorError):
    """A history names item ids that are not in the catalog."""

    def __init__(self, unknown: list):
        self.unknown = list(unknown)
        shown = ", ".join(repr(u) for u in self.unknown[:10])
        more = f" (+{len(self.unknown) - 10} more)" if len(self.unknown) > 10 else ""
        super().__init__(f"unknown item ids in histories: {shown}{more}; pass skip_unknown=True (CLI: --skip-unknown) to drop them")
