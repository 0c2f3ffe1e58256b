"""Where the archive's files live (SPEC §16): a local directory or an S3-compatible bucket, one way.

`open_archive(url)` takes LEDGER_ARCHIVE_URL: a directory path, `file://…`, or `s3://bucket/prefix`
(s3fs, with the credentials and endpoint of the standard AWS environment: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for an S3-compatible server). The methods are synchronous
(callers run them in a thread) and raise one exception each for the two ways a location fails:
`ArchiveConfigError` (the URL can never work: fix the configuration) and `ArchiveUnavailable` (it
does not work now: a missing bucket, credentials, a full disk). Their messages are one line and
never hold a secret.

A file is complete before it is visible (SPEC §16): locally it is written aside as
`<dir>/.<name>.tmp`, fsynced, renamed over its name, and the directory fsynced; on S3 it is one PUT
(the object appears whole or not at all), confirmed by reading its size back.
"""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from call_ledger.core.errors import ArchiveConfigError, ArchiveUnavailable

__all__ = ["ArchiveConfigError", "ArchiveFiles", "ArchiveUnavailable", "open_archive"]


# A bucket name as S3 allows it (lower case letters, digits, `.`, `-`; 3-63 characters).
_BUCKET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _redacted(text: str) -> str:
    """`text` without the secret key of the environment, should a library have put it there."""
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    return text.replace(secret, "***") if secret else text


def _no_credentials(error: BaseException) -> bool:
    return type(error).__name__ == "NoCredentialsError" or "Unable to locate credentials" in str(error)


def _describe(error: BaseException) -> str:
    """What went wrong, in words of one line, never a secret."""
    name = type(error).__name__
    if _no_credentials(error):
        return "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    if isinstance(error, OSError) and error.strerror:
        return _one_line(_redacted(error.strerror))
    text = _one_line(_redacted(str(error)))
    return f"{name}: {text}" if text else name


class ArchiveFiles:
    """The archive's root on one filesystem; paths given to the methods are relative to it
    (`calls/organization_id=7/date=2026-11-24/<pass>.parquet`)."""

    def __init__(self, fs: Any, root: str, url: str, *, local: bool) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url
        self.local = local

    def __repr__(self) -> str:
        return f"ArchiveFiles({self.url!r})"

    def _path(self, rel: str) -> str:
        if any(part in ("", ".", "..") for part in rel.split("/")):  # also "/…" and "…//…"
            raise ValueError(f"not a path inside the archive: {rel!r}")
        return f"{self.root}/{rel}"

    def url_of(self, rel: str) -> str:
        """Where `rel` is, for logs and people (never with credentials)."""
        return f"{self.url.rstrip('/')}/{rel}"

    def check(self) -> None:
        """ArchiveUnavailable (one line) unless the archive can be written now: locally the
        directory exists or can be made and a file can be written in it; on S3 the bucket answers
        to the configured credentials."""
        if self.local:
            self._check_directory()
        else:
            self._check_bucket()

    def _check_directory(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as error:
            raise ArchiveUnavailable(f"cannot create the archive directory {self.root}: {_describe(error)}") from None
        probe = os.path.join(self.root, f".check-{secrets.token_hex(6)}.tmp")
        try:
            with open(probe, "wb") as file:
                file.write(b"ok")
                file.flush()
                os.fsync(file.fileno())
        except OSError as error:
            raise ArchiveUnavailable(f"the archive directory {self.root} is not writable: {_describe(error)}") \
                from None
        finally:
            try:
                os.unlink(probe)
            except OSError:
                pass

    def _check_bucket(self) -> None:
        bucket = self.root.split("/", 1)[0]
        try:
            self.fs.info(bucket)
        except Exception as error:
            raise ArchiveUnavailable(_bucket_problem(bucket, self.url, error)) from None

    def exists(self, rel: str) -> bool:
        """Whether the file `rel` is there, whole (a file being written is not, yet)."""
        path = self._path(rel)
        try:
            if self.local:
                return os.path.isfile(path)
            self.fs.invalidate_cache(path)
            return bool(self.fs.info(path)["type"] == "file")
        except FileNotFoundError:
            return False
        except Exception as error:
            raise ArchiveUnavailable(f"cannot look for {self.url_of(rel)}: {_describe(error)}") from None

    def remove(self, rel: str) -> None:
        """Remove the file `rel` if it is there (a batch abandoned before its files were all written)."""
        path = self._path(rel)
        try:
            if self.local:
                os.unlink(path)
            else:
                self.fs.rm_file(path)
                self.fs.invalidate_cache(path)
        except FileNotFoundError:
            return
        except Exception as error:
            raise ArchiveUnavailable(f"cannot remove {self.url_of(rel)}: {_describe(error)}") from None

    def put(self, rel: str, data: bytes) -> None:
        """Write the file `rel`, complete before it is visible; replaces a file already there
        (a pass that resumes writes the same rows again)."""
        path = self._path(rel)
        try:
            if self.local:
                _put_local(path, data)
            else:
                self.fs.pipe_file(path, data)
                self.fs.invalidate_cache(path)
                size = self.fs.info(path)["size"]
                if size != len(data):
                    raise OSError(f"the object holds {size} bytes, not the {len(data)} written")
        except Exception as error:
            raise ArchiveUnavailable(f"cannot write {self.url_of(rel)}: {_describe(error)}") from None

    @contextmanager
    def get_parquet(self, rel: str) -> Iterator[IO[bytes]]:
        """The file `rel` opened for random access (a Parquet reader's source)."""
        path = self._path(rel)
        try:
            file = open(path, "rb") if self.local else self.fs.open(path, "rb", cache_type="none")
        except Exception as error:
            raise ArchiveUnavailable(f"cannot open {self.url_of(rel)}: {_describe(error)}") from None
        with file:
            yield file

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file `rel`: one read (on S3, one ranged GET)."""
        path = self._path(rel)
        try:
            if self.local:
                with open(path, "rb") as file:
                    return os.pread(file.fileno(), end - start, start)
            return bytes(self.fs.cat_file(path, start=start, end=end))
        except Exception as error:
            raise ArchiveUnavailable(f"cannot read {self.url_of(rel)}: {_describe(error)}") from None


def _bucket_problem(bucket: str, url: str, error: BaseException) -> str:
    if _no_credentials(error):
        return f"no AWS credentials for the archive bucket {bucket!r} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    if isinstance(error, FileNotFoundError):
        return f"the archive bucket {bucket!r} does not exist ({url})"
    if isinstance(error, PermissionError):
        return f"access to the archive bucket {bucket!r} was refused: {_describe(error)}"
    return f"the archive bucket {bucket!r} did not answer: {_describe(error)}"


def _fsync_directory(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _make_directories(path: str) -> None:
    """os.makedirs, with each directory it made fsynced into its parent: a partition's new
    directories survive a crash as the file renamed into them does."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            continue
        _fsync_directory(os.path.dirname(directory))


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


def _put_local(path: str, data: bytes) -> None:
    """Write aside (`.<name>.tmp`, which no reader globbing `*.parquet` sees), fsync, rename over
    the name, fsync the directory: the name holds the whole file or nothing, across a crash too."""
    directory, name = os.path.split(path)
    _make_directories(directory)
    temporary = os.path.join(directory, f".{name}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(descriptor, data)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def open_archive(url: str) -> ArchiveFiles:
    """The archive at `url` (LEDGER_ARCHIVE_URL): a directory, `file://…` or `s3://bucket/prefix`.
    ArchiveConfigError (one line) for any other URL. Nothing is reached yet: `check()` does."""
    text = url.strip()
    if not text:
        raise ArchiveConfigError("the archive URL is empty (a directory, file://… or s3://bucket/prefix)")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        return _local(text, text)
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ArchiveConfigError("a file:// archive URL is file:///absolute/path (no host, query or fragment)")
        return _local(parts.path, text)
    if scheme in ("s3", "s3a"):
        return _s3(parts.netloc, parts.path, parts.query or parts.fragment)
    raise ArchiveConfigError(f"archive URL scheme {scheme!r} is not supported (a directory, file://… or "
                             f"s3://bucket/prefix)")


def _local(path: str, url: str) -> ArchiveFiles:
    if not path or "\0" in path:
        raise ArchiveConfigError("the archive directory is not a path")
    root = os.path.abspath(os.path.expanduser(path))
    return ArchiveFiles(LocalFileSystem(), root, f"file://{root}", local=True)


def _s3(netloc: str, path: str, extra: str) -> ArchiveFiles:
    if "@" in netloc:  # never echo it: it may be a key and secret
        raise ArchiveConfigError("an s3:// archive URL holds no credentials: set AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY")
    bucket, prefix = netloc, path.strip("/")
    if not 3 <= len(bucket) <= 63 or not set(bucket) <= _BUCKET_CHARS or bucket[0] in ".-" or bucket[-1] in ".-":
        raise ArchiveConfigError(f"{bucket!r} is not an S3 bucket name (s3://bucket/prefix)")
    if extra or any(part in (".", "..") for part in prefix.split("/")) or "//" in prefix:
        raise ArchiveConfigError("an s3:// archive URL is s3://bucket/prefix (no query, fragment, . or ..)")
    try:
        import s3fs  # noqa: F401  (the implementation fsspec loads for s3://)
    except ImportError:
        raise ArchiveConfigError("s3:// archives need the s3fs package, which is not installed "
                                 "(a dependency of call-ledger: pip install s3fs)") from None
    # A filesystem of its own (not fsspec's shared instance): it reads the AWS environment when made.
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    root = f"{bucket}/{prefix}" if prefix else bucket
    return ArchiveFiles(fs, root, f"s3://{root}", local=False)
