"""Where the archive's files live (SPEC §16): a directory or an S3 bucket, each file complete before it
is visible, and every failure said in one line without a secret."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from call_ledger.archive import files as files_module
from call_ledger.archive.files import ArchiveConfigError, ArchiveUnavailable, open_archive
from tests.support.s3 import S3, SECRET_KEY

REL = "calls/organization_id=7/date=2026-11-24/p1.parquet"


def one_line_without_secret(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message and SECRET_KEY not in message, message
    return message


# -- the URL ----------------------------------------------------------------------------------------------

def test_a_directory_or_file_url_is_a_local_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert open_archive("archive").root == str(tmp_path / "archive")  # relative: from where it starts
    assert open_archive(f"file://{tmp_path}/a/").url == f"file://{tmp_path}/a"
    assert open_archive(f"{tmp_path}/b").url_of(REL) == f"file://{tmp_path}/b/{REL}"


def test_an_s3_url_is_a_bucket_and_prefix(aws_environment: None) -> None:
    assert open_archive("s3://calls-archive/ledger/prod/").url_of(REL) == f"s3://calls-archive/ledger/prod/{REL}"
    assert open_archive("s3://calls-archive").root == "calls-archive"


@pytest.mark.parametrize(("url", "says"), [
    ("ftp://x", "scheme 'ftp' is not supported"),
    ("https://bucket.s3.amazonaws.com/x", "scheme 'https' is not supported"),
    ("", "empty"),
    ("s3://", "not an S3 bucket name"),
    ("s3://Upper_Case/x", "not an S3 bucket name"),
    ("s3://bucket/a/../b", "s3://bucket/prefix"),
    ("s3://bucket/x?versionId=1", "s3://bucket/prefix"),
    (f"s3://AKIAEXAMPLE:{SECRET_KEY}@bucket/x", "holds no credentials"),
    ("file://otherhost/archive", "file:///absolute/path"),
])
def test_an_unusable_url_is_refused_in_one_line(url: str, says: str) -> None:
    with pytest.raises(ArchiveConfigError) as refused:
        open_archive(url)
    assert says in one_line_without_secret(refused.value)


# -- a directory ------------------------------------------------------------------------------------------

def test_check_makes_the_directory_and_leaves_nothing_in_it(tmp_path: Path) -> None:
    files = open_archive(str(tmp_path / "new" / "archive"))
    files.check()
    assert os.listdir(tmp_path / "new" / "archive") == []


def test_check_says_in_one_line_a_directory_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(ArchiveUnavailable) as unavailable:
        open_archive(str(tmp_path / "a-file" / "archive")).check()
    assert one_line_without_secret(unavailable.value) == \
        f"cannot create the archive directory {tmp_path}/a-file/archive: Not a directory"


def test_check_says_in_one_line_a_directory_is_not_writable(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes whatever the mode says: sysfs takes no new file even from root
        directory = "/sys"
    else:
        (tmp_path / "read-only").mkdir(mode=0o500)
        directory = str(tmp_path / "read-only")
    with pytest.raises(ArchiveUnavailable) as unavailable:
        open_archive(directory).check()
    message = one_line_without_secret(unavailable.value)
    assert message.startswith(f"the archive directory {directory} is not writable: "), message


def test_put_writes_the_file_whole_and_replaces_one_already_there(tmp_path: Path) -> None:
    files = open_archive(str(tmp_path))
    assert not files.exists(REL)
    files.put(REL, b"first")
    files.put(REL, b"second, longer")
    assert files.exists(REL) and (tmp_path / REL).read_bytes() == b"second, longer"
    assert files.read_range(REL, 8, 14) == b"longer"
    with files.get_parquet(REL) as file:
        assert file.read() == b"second, longer"
    assert sorted(os.listdir(tmp_path / REL.rsplit("/", 1)[0])) == ["p1.parquet"]  # no temporary file left


@pytest.mark.parametrize("rel", ["/etc/passwd", "../outside.parquet", "calls/../../x", "calls//x", ""])
def test_a_path_outside_the_archive_is_refused(tmp_path: Path, rel: str) -> None:
    with pytest.raises(ValueError):
        open_archive(str(tmp_path / "archive")).put(rel, b"x")


def test_a_write_that_fails_midway_leaves_nothing_at_the_name_and_a_later_one_succeeds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = open_archive(str(tmp_path))
    real_write_all = files_module._write_all

    def half_then_disk_full(descriptor: int, data: bytes) -> None:
        real_write_all(descriptor, data[:len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files_module, "_write_all", half_then_disk_full)
    with pytest.raises(ArchiveUnavailable) as unavailable:
        files.put(REL, b"x" * 100_000)
    assert one_line_without_secret(unavailable.value) == \
        f"cannot write file://{tmp_path}/{REL}: No space left on device"
    assert not files.exists(REL) and not (tmp_path / REL).exists()
    assert os.listdir(tmp_path / REL.rsplit("/", 1)[0]) == []  # the half-written file is gone too
    monkeypatch.undo()
    files.put(REL, b"y" * 100_000)
    assert (tmp_path / REL).read_bytes() == b"y" * 100_000


def test_a_process_killed_midway_leaves_only_a_hidden_temporary_file(tmp_path: Path) -> None:
    """A crash runs no cleanup: what it leaves is `.p1.parquet.tmp`, which is no file of the archive
    (not at the name, not matched by `*.parquet`) and which the next put of that name writes over."""
    script = (
        "import os, sys\n"
        "from call_ledger.archive import files as f\n"
        "real = f._write_all\n"
        "def die(descriptor, data):\n"
        "    real(descriptor, data[:len(data) // 2])\n"
        "    os._exit(9)\n"
        "f._write_all = die\n"
        "f.open_archive(sys.argv[1]).put(sys.argv[2], b'z' * 100000)\n"
    )
    died = subprocess.run([sys.executable, "-c", script, str(tmp_path), REL], check=False, timeout=60)
    assert died.returncode == 9
    partition = tmp_path / REL.rsplit("/", 1)[0]
    assert os.listdir(partition) == [".p1.parquet.tmp"] and (partition / ".p1.parquet.tmp").stat().st_size == 50_000
    files = open_archive(str(tmp_path))
    assert not files.exists(REL) and list(partition.glob("*.parquet")) == []
    files.put(REL, b"w" * 100_000)
    assert os.listdir(partition) == ["p1.parquet"] and (partition / "p1.parquet").read_bytes() == b"w" * 100_000


# -- an S3 bucket (moto's server) -------------------------------------------------------------------------

def test_s3_check_put_exists_and_read(s3: S3) -> None:
    files = open_archive(s3.url())
    files.check()
    assert not files.exists(REL)
    files.put(REL, b"0123456789" * 1000)
    assert files.exists(REL)
    assert files.read_range(REL, 5, 15) == b"5678901234"
    stored = s3.client.get_object(Bucket=s3.bucket, Key=f"archive/{REL}")["Body"].read()
    assert stored == b"0123456789" * 1000
    with files.get_parquet(REL) as file:
        file.seek(9990)
        assert file.read() == b"0123456789"


def test_s3_check_says_in_one_line_the_bucket_does_not_exist(s3: S3) -> None:
    with pytest.raises(ArchiveUnavailable) as unavailable:
        open_archive("s3://no-such-bucket-here/x").check()
    assert one_line_without_secret(unavailable.value) == \
        "the archive bucket 'no-such-bucket-here' does not exist (s3://no-such-bucket-here/x)"


def test_s3_check_says_in_one_line_there_are_no_credentials(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    files = open_archive(s3.url())
    with pytest.raises(ArchiveUnavailable) as unavailable:
        files.check()
    assert one_line_without_secret(unavailable.value) == (
        f"no AWS credentials for the archive bucket '{s3.bucket}' (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    with pytest.raises(ArchiveUnavailable) as unavailable:
        files.put(REL, b"x")
    assert "no AWS credentials found" in one_line_without_secret(unavailable.value)


def test_s3_errors_never_show_the_secret_key(s3: S3) -> None:
    files = open_archive("s3://no-such-bucket-here/x")
    for attempt in (files.check, lambda: files.put(REL, b"x"), lambda: files.read_range(REL, 0, 1),
                    lambda: files.get_parquet(REL).__enter__()):
        with pytest.raises(ArchiveUnavailable) as unavailable:
            attempt()
        one_line_without_secret(unavailable.value)
        assert SECRET_KEY not in repr(unavailable.value.__context__)  # `from None`, and nothing held


def test_s3_a_put_that_fails_leaves_nothing_and_a_later_one_succeeds(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 makes an object visible whole or not at all; a PUT that breaks off is an error, not a file."""
    files = open_archive(s3.url())
    real_call = files.fs._call_s3

    async def connection_lost(method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "put_object":
            raise ConnectionResetError(104, "Connection reset by peer")
        return await real_call(method, *args, **kwargs)

    monkeypatch.setattr(files.fs, "_call_s3", connection_lost)
    with pytest.raises(ArchiveUnavailable) as unavailable:
        files.put(REL, b"x" * 10_000)
    assert one_line_without_secret(unavailable.value) == f"cannot write {s3.url()}/{REL}: Connection reset by peer"
    assert not files.exists(REL)
    assert "Contents" not in s3.client.list_objects_v2(Bucket=s3.bucket)
    monkeypatch.undo()
    files.put(REL, b"y" * 10_000)
    assert files.exists(REL) and files.read_range(REL, 0, 3) == b"yyy"
