"""What `pip install` puts in site-packages: one package, call_ledger, with the worker and the read API
inside it (they are top-level folders here, linked in as call_ledger/worker and call_ledger/api), and the
Lua scripts the store loads at run time. Nothing named `worker` or `api` lands at the top, where it would
collide with any other distribution's package of that name."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.paths import ROOT


def test_the_wheel_installs_one_top_level_package_holding_worker_api_and_the_scripts(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("call_ledger", "worker", "api"):  # the links stay links, as in a clone
        shutil.copytree(ROOT / folder, source / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("call_ledger-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"call_ledger"}
    for module in ("call_ledger/worker/consumer.py", "call_ledger/worker/sources/twilio.py",
                   "call_ledger/api/calls.py", "call_ledger/core/rules.py", "call_ledger/store/lua/commit.lua"):
        assert module in names
    assert sum(name.endswith(".lua") for name in names) == len(list((ROOT / "call_ledger/store/lua").glob("*.lua")))
