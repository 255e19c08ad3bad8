"""What changed between two versions of a document: a unified diff, or the same as HTML for the
test UI (every line escaped, so a model's markup never becomes markup)."""

from __future__ import annotations

import difflib
import html


def unified(old: str, new: str, old_name: str, new_name: str) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), fromfile=old_name, tofile=new_name, n=2
        )
    )


def as_html(old: str, new: str) -> str:
    """Changed lines with two lines of context, as <del>/<ins>/<span> rows in a <pre>; "" when
    equal. Each row is a block of its own, so rows are not separated by newlines (which a <pre>
    would show as blank lines between them)."""
    rows = []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), n=2, lineterm=""):
        if line.startswith(("---", "+++")):
            continue
        text = html.escape(line[1:] if line[:1] in "+- " else line)
        if line.startswith("@@"):
            rows.append(f'<span class="hunk">{html.escape(line)}</span>')
        elif line.startswith("+"):
            rows.append(f"<ins>{text}</ins>")
        elif line.startswith("-"):
            rows.append(f"<del>{text}</del>")
        else:
            rows.append(f"<span>{text}</span>")
    return f'<pre class="diff">{"".join(rows)}</pre>' if rows else ""
