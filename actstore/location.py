"""Where a store lives: a local folder, or any fsspec URL (``s3://bucket/acts.zarr``,
``gs://...``, ``memory://...``). ``file://`` URLs are local folders.

Object stores take their credentials and endpoint from the environment only
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...; for
gs, ``GOOGLE_APPLICATION_CREDENTIALS``): actstore has no flag for them, so they are
never recorded in a store's metadata. Object writes are atomic (whole objects), so
shards need no fsync there; the one-writer lock file exists only for local stores.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from typing import Any

__all__ = [
    "normalize",
    "is_url",
    "exists",
    "is_empty",
    "remove",
    "figure_path",
    "filesystem",
    "existing_folder",
    "write_probe",
]


def normalize(path: str | os.PathLike[str]) -> str:
    """A local path for local stores (``file://`` stripped), the URL otherwise."""
    path = os.fspath(path)
    if path.startswith("file://"):
        return path[len("file://") :]
    return path


def is_url(path: str) -> bool:
    return "://" in normalize(path)


def filesystem(path: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a URL."""
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(path)
    except (ImportError, ValueError) as e:
        from .errors import ConfigError

        scheme = path.split("://")[0]
        hint = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(
            scheme, f"the fsspec {scheme} backend"
        )
        raise ConfigError(
            f"Cannot open '{path}': {e}. Install {hint} (pip install 'actstore[s3]' for s3://)."
        ) from None


def exists(path: str) -> bool:
    path = normalize(path)
    if not is_url(path):
        return os.path.exists(path)
    fs, p = filesystem(path)
    try:
        return bool(fs.exists(p))  # on object stores: any object under the prefix
    except (
        Exception
    ) as e:  # no credentials, no endpoint, access denied: the backend's own error types
        raise _unreachable(path, e) from e


_GCS = "GOOGLE_APPLICATION_CREDENTIALS"
# what the error asks to set, per scheme
_CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for a "
    "server other than AWS",
    "gs": _GCS,
    "gcs": _GCS,
}


def _unreachable(path: str, error: BaseException) -> Exception:
    """The error for a URL whose object storage cannot be asked (``error``: the backend's)."""
    from .errors import ConfigError

    scheme = path.split("://")[0]
    env = _CREDENTIALS.get(scheme, f"the variables your fsspec {scheme} backend reads")
    return ConfigError(
        f"Cannot read '{path}' ({type(error).__name__}: {error}). Object storage takes its credentials "
        f"and endpoint from the environment only: set {env}; then check the URL's bucket and path."
    )


def is_empty(path: str) -> bool:
    """Nothing there, or an empty folder."""
    path = normalize(path)
    if not is_url(path):
        return not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path))
    return not exists(path)


def remove(path: str) -> None:
    path = normalize(path)
    if not is_url(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        return
    fs, p = filesystem(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def figure_path(store_path: str, suffix: str) -> str:
    """``<store minus .zarr><suffix>`` beside a local store; in the working folder for
    a store on object storage."""
    path = normalize(store_path).rstrip("/")
    stem = os.path.basename(path).removesuffix(".zarr")
    folder = "" if is_url(path) else os.path.dirname(path)
    return os.path.join(folder, stem + suffix)


def existing_folder(path: str) -> str:
    """The deepest folder of local ``path`` (which may not exist yet) that exists: where a
    write of ``path`` would have to start. NotADirectoryError (its ``filename`` the file) where
    a file stands in the way."""
    folder = os.path.abspath(path)
    while not os.path.isdir(folder):
        if os.path.exists(folder):
            raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder", folder)
        folder = os.path.dirname(folder)
    return folder


def write_probe(folder: str) -> None:
    """A real write in local ``folder``: a small file made and removed (OSError where
    permissions, a read-only mount or a full disk refuse it)."""
    fd, name = tempfile.mkstemp(prefix=".actstore-write-check-", dir=folder)
    os.close(fd)
    os.remove(name)
