"""MkDocs hook: the README is the site's home page, and links to repository files outside docs/ are checked.

README.md stays at the repository root, where a newcomer (and the package index) finds it; MkDocs builds only
docs/. A copy in docs/ would be a second README to keep in step, so the build serves README.md itself as the
site's index.md: its `docs/x.md` links become `x.md`, and the pages' `../README.md` links become the home page.
A link to any other repository file (deploy/README.md, examples/pricing.yaml) has no page in the site: it is
checked to exist, then shown as its path. A link to a missing file is a warning, which `mkdocs build --strict`
(`make docs`, .ci/run) turns into a failed build; links between pages, and their anchors, MkDocs checks itself.
"""

import logging
import os
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LINK = re.compile(r"\[(?P<text>[^\]\n]+)\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")

log = logging.getLogger("mkdocs.hooks.repository_links")


def on_files(files: Files, config: Any) -> Files:
    """Serve the repository's README.md as the site's index.md (docs/ has no index.md of its own)."""
    if files.get_file_from_path("index.md") is None:
        files.append(File.generated(config, "index.md", abs_src_path=str(README)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Point each relative link at the file it names as the site sees it, or at nothing if it is not in the site."""
    docs = Path(config["docs_dir"]).resolve()
    source_dir = Path(page.file.abs_src_path).resolve().parent  # where the link was written (the README: the root)
    site_dir = (docs / page.file.src_uri).parent  # where the page lands in the site

    def relink(match: re.Match[str]) -> str:
        text, target, anchor = match["text"], match["target"], match["anchor"] or ""
        if "://" in target or target.startswith("mailto:"):
            return match[0]
        path = (source_dir / target).resolve()
        if path == README:
            path = docs / "index.md"
        if path.is_relative_to(docs):
            return f"[{text}]({Path(os.path.relpath(path, site_dir)).as_posix()}{anchor})"
        if not path.exists():
            log.warning("%s links to %s, which is not a file of the repository", page.file.abs_src_path, target)
            return match[0]
        shown = f"`{path.relative_to(ROOT).as_posix()}`"
        return shown if text.strip("`") == path.relative_to(ROOT).as_posix() else f"{text} ({shown})"

    return LINK.sub(relink, markdown)
