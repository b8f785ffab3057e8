"""One root error; each subclass also inherits the matching builtin, so that
`except FileNotFoundError` or `except ValueError` still catches it."""

from __future__ import annotations

__all__ = [
    "ActStoreError",
    "ModelNotFoundError",
    "UnknownSiteError",
    "CorpusError",
    "EmptyCorpusError",
    "MissingTextFieldError",
    "CorpusExhaustedError",
    "ConfigError",
    "StoreExistsError",
    "StoreMismatchError",
    "StoreNotFoundError",
    "StoreFormatError",
    "ResultExistsError",
    "InsufficientDiskError",
    "WriterError",
    "RowsNotDoneError",
    "CorruptChunkError",
    "StoreDamagedError",
    "RowIndexError",
    "StoreLockedError",
    "PeerFailedError",
    "EngineCheckError",
    "NotWritableError",
    "MissingDependencyError",
]


class ActStoreError(Exception):
    """Root of every error actstore raises on purpose. Messages say what was
    expected, what was found, and the fix."""


class ModelNotFoundError(ActStoreError, FileNotFoundError):
    """The model name or folder cannot be loaded."""


class UnknownSiteError(ActStoreError, KeyError):
    """A site spec or hook name that the model does not expose."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ConfigError(ActStoreError, ValueError):
    """Options that contradict each other or the model (e.g. seq_len > n_ctx)."""


class CorpusError(ActStoreError, ValueError):
    """The corpus cannot be read as asked."""


class EmptyCorpusError(CorpusError):
    """The corpus holds no tokens."""


class MissingTextFieldError(CorpusError, KeyError):
    """The records have no field of the given name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CorpusExhaustedError(CorpusError):
    """The corpus ran out before the requested number of rows."""


class StoreExistsError(ActStoreError, FileExistsError):
    """The output path already holds something and neither resume nor overwrite was asked."""


class StoreMismatchError(ActStoreError, ValueError):
    """A store made with another model, corpus or config."""


class StoreNotFoundError(ActStoreError, FileNotFoundError):
    """No actstore store at the path."""


class StoreFormatError(ActStoreError, ValueError):
    """A store this actstore cannot read: a later format version, or metadata that
    lacks what its version requires."""


class ResultExistsError(StoreExistsError):
    """A job result is already there and replacing it was not asked."""


class InsufficientDiskError(ActStoreError, OSError):
    """The disk lacks room for the estimated store."""


class WriterError(ActStoreError, OSError):
    """Writing a chunk failed; the run stopped and the chunk is not marked done."""


class RowsNotDoneError(ActStoreError, LookupError):
    """Rows asked of a store that its run has not finished writing."""


class StoreDamagedError(ActStoreError, OSError):
    """A store whose objects are damaged: metadata (zarr.json) missing, unreadable or not
    what the store's own metadata defines, or chunks (CorruptChunkError)."""


class CorruptChunkError(StoreDamagedError):
    """A chunk that fails its checksum, or a finished chunk whose object is missing."""


class RowIndexError(ActStoreError, IndexError):
    """A row index outside the store's rows."""


class StoreLockedError(ActStoreError, BlockingIOError):
    """Another run holds the store's lock."""


class PeerFailedError(ActStoreError, RuntimeError):
    """Another process of a multi-process run stopped; the shards it did not finish are not done."""


class EngineCheckError(ActStoreError, RuntimeError):
    """The vectorised patching engine disagreed with a plain ``run_with_hooks`` of the
    same patch (installed libraries whose internals changed); no result was returned."""


class NotWritableError(ActStoreError, PermissionError):
    """A job's results or figures would go where nothing can be written (a read-only
    store or folder); refused before any work."""


class MissingDependencyError(ActStoreError, ImportError):
    """An optional library an integration needs is not installed (the message names the
    ``pip install`` that adds it)."""
