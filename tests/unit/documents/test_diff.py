"""Diffs between two versions of a document, as text and as escaped HTML."""

from __future__ import annotations

from delivery.documents.diff import as_html, unified


def test_the_unified_diff_names_both_versions():
    assert unified("a\nb\n", "a\nc\n", "plan v1", "plan v2") == (
        "--- plan v1\n+++ plan v2\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
    )


def test_html_rows_are_blocks_without_newlines_between_them_and_everything_is_escaped():
    html = as_html("# Plan\n\nVerifies: REQ-9\n", "# Plan\n\nVerifies: <b>REQ-1</b>\n")
    assert html == (
        '<pre class="diff"><span class="hunk">@@ -1,3 +1,3 @@</span>'
        "<span># Plan</span><span></span>"
        "<del>Verifies: REQ-9</del><ins>Verifies: &lt;b&gt;REQ-1&lt;/b&gt;</ins></pre>"
    )


def test_equal_versions_have_no_diff():
    assert as_html("same\n", "same\n") == "" and unified("same\n", "same\n", "a", "b") == ""
