"""The release before this one, as code on disk: what a rolling upgrade runs beside this one.

A deployment upgrades one process at a time, so for a while workers of two releases consume one
stream and write one Redis (SPEC §13: side by side they apply every event exactly once, and each
reads what the other wrote). PREVIOUS_RELEASE is the commit of the release this one must work
beside; move it forward when a release ships, and a layout change is tested against it.
"""

import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

from tests.support.paths import ROOT

# The last landed release before layout 5 (index entries as their payload alone): it reads layouts 2, 3
# and 4 and names its connections so (call_ledger.store.client).
PREVIOUS_RELEASE = "142b5a08637e924a528caf2130627b73c5b384ba"


def extract_previous_release(directory: Path) -> Path | None:
    """The previous release's package (call_ledger with its worker/ and api/ folders) under
    `directory`, from this repository's history; None when the history lacks it (a shallow clone)."""
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"],
                           capture_output=True, check=False)
    if known.returncode != 0:
        return None
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS_RELEASE,
                              "call_ledger", "worker", "api"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(directory, filter="tar")  # worker/ and api/ are symlinked into call_ledger/
    return directory


def previous_release_file(path: str) -> str | None:
    """One file of the previous release (e.g. its index script, which a test runs beside this release's),
    from this repository's history; None when the history lacks it (a shallow clone)."""
    shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{PREVIOUS_RELEASE}:{path}"], capture_output=True,
                           check=False)
    return shown.stdout.decode() if shown.returncode == 0 else None
