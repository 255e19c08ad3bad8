"""Deliverables as HTML, rendered on the server for the test UI.

The documents are written by a language model, so they are untrusted: raw HTML in them is
escaped (markdown-it's `html` option off) and links with script-capable schemes are refused by
markdown-it's link validation. The browser then only ever inserts markup produced here.
"""

from __future__ import annotations

from markdown_it import MarkdownIt

_renderer = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)


def to_html(markdown: str) -> str:
    return _renderer.render(markdown)
