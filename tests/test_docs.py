"""The docs agree with the code.

docs/api.md is what ``scripts/api_docs.py`` generates from the docstrings, every
relative link of the Markdown files leads somewhere, and the quick start's app does
what docs/quickstart.md says.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websocket

from tests.helpers import WAIT

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKDOWN = [ROOT / "README.md", ROOT / "CHANGES.md", *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.M)


def api_docs() -> types.ModuleType:
    """scripts/api_docs.py, imported."""
    spec = importlib.util.spec_from_file_location("api_docs", ROOT / "scripts" / "api_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_api_reference_is_up_to_date() -> None:
    generated = api_docs().generate()
    current = (DOCS / "api.md").read_text(encoding="utf-8")
    diff = difflib.unified_diff(
        current.splitlines(), generated.splitlines(), "docs/api.md", "docstrings", lineterm=""
    )
    lines = list(diff)
    assert not lines, "docs/api.md is out of date: run python scripts/api_docs.py\n" + "\n".join(
        lines[:80]
    )


def prose(text: str) -> str:
    """Markdown without its code: fenced blocks and inline code removed."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_links_resolve() -> None:
    broken = []
    for page in MARKDOWN:
        for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):
                continue  # http://, https://, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_links_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("docs/chat.png", *(f"docs/{p.name}" for p in DOCS.glob("*.md"))):
        assert f"({page})" in readme, f"README.md does not link {page}"


def quickstart_app() -> Any:
    """The first Python block of docs/quickstart.md, run as a module."""
    text = (DOCS / "quickstart.md").read_text(encoding="utf-8")
    match = re.search(r"^```python\n(.*?)^```", text, re.M | re.S)
    assert match, "docs/quickstart.md has no Python block"
    module = types.ModuleType("quickstart_app")
    exec(compile(match.group(1), "docs/quickstart.md", "exec"), module.__dict__)
    return module.app


def test_quickstart_app_does_what_the_page_says(serve: Callable[[Any], str]) -> None:
    address = serve(quickstart_app())
    first = websocket.create_connection(f"ws://{address}/web_socket", timeout=WAIT)
    second = websocket.create_connection(f"ws://{address}/web_socket", timeout=WAIT)
    try:
        assert first.recv() == "Connected to ws"
        assert second.recv() == "Connected to ws"
        first.send("hello")
        said = first.recv()
        assert isinstance(said, str) and re.fullmatch(r"\S+ says hello", said), said
        assert second.recv() == said  # the broadcast reaches every client
        first.send("bye")
        # The handler returns nothing: the next message is the next broadcast.
        assert first.recv() == said.replace("hello", "bye")
        assert second.recv() == said.replace("hello", "bye")
    finally:
        first.close()
        second.close()


def test_changes_lists_every_public_name() -> None:
    """CHANGES.md has an Unreleased section that mentions every name of ``geo_ws.__all__``."""
    import geo_ws

    text = (ROOT / "CHANGES.md").read_text(encoding="utf-8")
    assert re.search(r"^## Unreleased$", text, re.M)
    missing = [name for name in geo_ws.__all__ if name != "__version__" and name not in text]
    assert not missing, f"CHANGES.md does not mention {', '.join(missing)}"
