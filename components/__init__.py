"""genrec: generative recommendation with popularity-bias mitigation, as components.

Each sub-package is one component (``data``, ``registry``, ``tokenizer``, ``rebalancer``,
``generator``, ``retrieval``, ``evaluation``, ``serving``). Components exchange artifacts through
the registry, never each other's internals.
"""

__version__ = "0.1.0"
