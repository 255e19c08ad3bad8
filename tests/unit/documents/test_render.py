from delivery.documents.render import to_html


def test_headings_lists_and_tables_render():
    html = to_html("# Plan\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert "<h1>Plan</h1>" in html
    assert "<li>one</li>" in html
    assert "<table>" in html and "<td>1</td>" in html


def test_raw_html_from_the_model_is_escaped():
    html = to_html('Hello <script>alert(1)</script>\n\n<img src=x onerror="steal()">\n')
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;steal()&quot;&gt;" in html


def test_script_links_are_not_links():
    html = to_html("[click](javascript:alert(1)) and [ok](https://example.com/a)")
    assert 'href="javascript:' not in html
    assert '<a href="https://example.com/a">ok</a>' in html
