"""The test UI in a real browser: Playwright for Python driving Debian's Chromium."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.support.api import AGENTS
from tests.support.server_process import free_port
from tests.support.tcp_proxy import CuttableProxy

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # tests/artifacts
# Flags for a closed network (no background connections) and running as root in a sandbox.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `make test` (it installs it) or `make browser`.")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


class Watched:
    """A page plus every console error and uncaught exception it produced."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.set_default_timeout(TIMEOUT_MS)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def network_failures_only(self) -> list[str]:
        """Errors other than the browser reporting a dropped connection."""
        return [e for e in self.errors if "net::ERR_" not in e]


@pytest.fixture
def open_page(browser) -> Iterator:
    contexts = []

    def open_(url: str, *, locale: str = "en-US", viewport: dict | None = None) -> Watched:
        context = browser.new_context(locale=locale, viewport=viewport or {"width": 1280, "height": 900})
        contexts.append(context)
        watched = Watched(context.new_page())
        watched.page.goto(url)
        return watched

    yield open_
    for context in contexts:
        context.close()


def submit(page: Page, requirement: str, *, confirm_first: bool) -> str:
    page.get_by_label("What should the team build?").fill(requirement)
    box = page.get_by_label("Let me review the ProductManager's analysis before the team goes on")
    box.set_checked(confirm_first)
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#task-title")).to_have_text(re.compile(r"Task [0-9a-f-]+"))
    return page.locator("#task-title").inner_text().split()[-1]


def sequences(page: Page) -> list[int]:
    return [int(s) for s in page.locator("#log li").evaluate_all("rows => rows.map(r => r.dataset.seq)")]


def assert_complete_log(page: Page, last_sequence: int) -> None:
    assert sequences(page) == list(range(1, last_sequence + 1))


def test_submit_runs_four_agents_and_renders_escaped_deliverables(server, open_page):
    w = open_page(server.url + "/test-ui")
    page = w.page
    task_id = submit(
        page, 'Build a notes app. <img src=x onerror="window.__xss=1"> Share notes by link.', confirm_first=False
    )
    expect(page.locator("#task-status")).to_have_attribute("data-status", "succeeded")
    for name in AGENTS:
        expect(page.locator(f'.agent[data-agent="{name}"]')).to_have_attribute("data-state", "done")
    expect(page.locator("#progress-label")).to_have_text("4 of 4 steps")
    expect(page.locator("#conn")).to_have_attribute("data-state", "finished")

    # Rendered from Markdown on the server; the model's raw HTML arrives as text, not markup.
    panel = page.locator("#panel-requirements_analysis")
    expect(panel.locator("h1, h2").first).to_be_visible()
    expect(panel).to_contain_text('<img src=x onerror="window.__xss=1">')
    assert panel.locator("img").count() == 0
    assert page.evaluate("window.__xss") is None
    page.get_by_role("tab", name="Design").click()
    expect(page.locator("#panel-technical_design")).to_be_visible()
    expect(page.locator("#panel-technical_design li").first).to_be_visible()
    expect(page.locator("#verdict")).to_have_text(re.compile("Verdict: (GO|NO-GO)"))

    zip_link = page.get_by_role("link", name="Download all (.zip)")
    with page.expect_download() as download:
        zip_link.click()
    names = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes())).namelist()
    assert "REQUIREMENTS.md" in names and "events.jsonl" in names

    last = httpx.get(f"{server.url}/api/task/{task_id}/status").json()["last_sequence"]
    assert_complete_log(page, last)
    # Token rows exist but are filtered out of view by default; the filter shows them.
    assert page.locator('#log li[data-type="thought"]').first.is_hidden()
    page.get_by_label("tokens").check()
    expect(page.locator('#log li[data-type="thought"]').first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "test-ui-finished.png", full_page=True)
    assert w.errors == []


def test_confirm_with_feedback_then_approve(server, open_page):
    w = open_page(server.url + "/test-ui")
    page = w.page
    task_id = submit(page, "A shared shopping list with categories", confirm_first=True)
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#analysis h1, #analysis h2").first).to_be_visible()
    expect(page.locator("#rounds-left")).to_have_text("Revision rounds left: 3")
    page.screenshot(path=ARTIFACTS / "test-ui-confirmation.png")

    # Requesting changes needs feedback: the browser refuses and nothing is sent.
    dialog.get_by_role("button", name="Request changes").click()
    assert page.locator("#feedback").evaluate("el => el.validationMessage") != ""
    assert httpx.get(f"{server.url}/api/task/{task_id}/status").json()["status"] == "awaiting_confirmation"

    dialog.get_by_label("What should change? (needed to request changes)").fill("Add sharing with family members")
    dialog.get_by_role("button", name="Request changes").click()
    expect(page.locator("#rounds-left")).to_have_text("Revision rounds left: 2")
    expect(dialog).to_be_visible()
    expect(page.locator('#log li[data-type="confirmed"]')).to_have_count(1)
    expect(page.locator('#log li[data-type="confirmed"]')).to_contain_text("Add sharing with family members")

    dialog.get_by_role("button", name="Approve").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#task-status")).to_have_attribute("data-status", "succeeded")
    expect(page.locator('#log li[data-type="awaiting_confirmation"]')).to_have_count(2)
    expect(page.locator('#log li[data-type="confirmed"]')).to_have_count(2)
    for name in AGENTS:
        expect(page.locator(f'.agent[data-agent="{name}"]')).to_have_attribute("data-state", "done")
    assert w.errors == []


def test_cancel_while_running(slow_server, open_page):
    w = open_page(slow_server.url + "/test-ui")
    page = w.page
    task_id = submit(page, "An inventory tracker for a small shop", confirm_first=False)
    expect(page.locator('.agent[data-state="working"]')).to_have_count(1)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#task-status")).to_have_attribute("data-status", "cancelled")
    expect(page.locator('.agent[data-state="cancelled"]')).to_have_count(1)
    expect(page.locator("#cancel")).to_be_hidden()
    assert httpx.get(f"{slow_server.url}/api/task/{task_id}/status").json()["status"] == "cancelled"
    expect(page.locator('#log li[data-type="cancelled"]')).to_have_count(1)
    assert w.errors == []


def test_second_viewer_by_url_sees_the_same_log(slow_server, open_page):
    first = open_page(slow_server.url + "/test-ui")
    task_id = submit(first.page, "A booking system for a hair salon", confirm_first=False)
    expect(first.page.locator('.agent[data-agent="QAEngineer"]')).to_have_attribute("data-state", "working")
    second = open_page(f"{slow_server.url}/test-ui?task={task_id}")
    expect(second.page.locator("#task-title")).to_have_text(f"Task {task_id}")
    expect(second.page.locator("#task-requirement")).to_have_text("A booking system for a hair salon")
    for w in (first, second):
        expect(w.page.locator("#task-status")).to_have_attribute("data-status", "succeeded")
    last = httpx.get(f"{slow_server.url}/api/task/{task_id}/status").json()["last_sequence"]
    assert_complete_log(first.page, last)
    assert_complete_log(second.page, last)
    # The recent list links to the task; opening it again is a third viewer with the full history.
    expect(second.page.locator(f'#recent-list a[data-task="{task_id}"]')).to_have_attribute("aria-current", "true")
    assert first.errors == [] and second.errors == []


def test_resumes_after_the_connection_is_cut_without_duplicates(slow_server, open_page):
    proxy = CuttableProxy(slow_server.port)
    try:
        w = open_page(proxy.url + "/test-ui")
        page = w.page
        task_id = submit(page, "A chat app for a team with channels", confirm_first=False)
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        expect(page.locator("#log li").nth(100)).to_be_attached()
        connections_before = proxy.connections
        assert proxy.cut() >= 1
        expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
        expect(page.locator("#conn")).to_have_text("connection lost, reconnecting…")
        expect(page.locator("#conn")).to_have_attribute("data-state", re.compile("live|finished"))
        # The run goes on for several seconds after the cut: wait for its end, not 5 s.
        expect(page.locator("#task-status")).to_have_attribute("data-status", "succeeded", timeout=60_000)
        assert proxy.connections > connections_before  # it did reconnect, through the proxy
        last = httpx.get(f"{slow_server.url}/api/task/{task_id}/status").json()["last_sequence"]
        assert_complete_log(page, last)  # every sequence once, in order: no gap, no duplicate
        # ...and not because the page dropped repeats: over the wire, the reconnection asked to
        # resume after the last event the browser had, and the server sent exactly what followed.
        # (Events the proxy had forwarded into the cut socket never reached the browser, so the
        # resume point may lie a few events before the end of what the first connection carried.)
        sent, after = proxy.sse_ids, proxy.resumed_after
        assert len(sent) == 2 and after[0] == 0, (after, [(ids[0], ids[-1]) for ids in sent])
        assert after[1] <= sent[0][-1] and sent[1][0] == after[1] + 1
        assert sent[0][: after[1]] + sent[1] == list(range(1, last + 1))
        assert w.network_failures_only() == []
    finally:
        proxy.close()


def test_language_defaults_from_browser_and_switches(server, open_page):
    w = open_page(server.url + "/test-ui", locale="zh-CN")
    page = w.page
    expect(page.locator("h1")).to_have_text("多智能体软件交付系统")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.get_by_role("button", name="开始")).to_be_visible()
    page.get_by_label("语言").select_option("en")
    expect(page.locator("h1")).to_have_text("Multi-Agent Software Delivery")
    expect(page.get_by_role("button", name="Start")).to_be_visible()
    page.reload()  # the choice is remembered
    expect(page.locator("h1")).to_have_text("Multi-Agent Software Delivery")
    assert w.errors == []


def test_phone_sized_screen_and_labels(server, open_page):
    w = open_page(server.url + "/test-ui", viewport={"width": 390, "height": 844})
    page = w.page
    page.get_by_role("button", name="待办事项应用").click()
    expect(page.get_by_label("What should the team build?")).to_have_value(re.compile("待办事项"))
    submit(page, page.get_by_label("What should the team build?").input_value(), confirm_first=False)
    expect(page.locator("#task-status")).to_have_attribute("data-status", "succeeded")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    unlabelled = page.evaluate("""[...document.querySelectorAll('input, textarea, select, button')]
        .filter(el => !el.labels?.length && !el.getAttribute('aria-label') && !el.textContent.trim())
        .map(el => el.outerHTML)""")
    assert unlabelled == []
    page.screenshot(path=ARTIFACTS / "test-ui-phone.png", full_page=True)
    assert w.errors == []


def test_unknown_task_by_url_says_so(server, open_page):
    w = open_page(server.url + "/test-ui?task=no-such-task")
    expect(w.page.get_by_role("alert")).to_have_text("Task no-such-task does not exist or has expired.")
    # The failed requests are reported by the browser itself; the page raises nothing.
    assert [e for e in w.errors if "404" not in e] == []


def test_with_api_keys_the_page_asks_for_one_then_works(start_server, open_page):
    server = start_server(api_keys="ui-key-123")
    w = open_page(server.url + "/test-ui")
    page = w.page
    expect(page.get_by_role("heading", name="This server needs an API key")).to_be_visible()
    page.get_by_label("API key", exact=True).fill("ui-key-123")
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#auth")).to_be_hidden()
    submit(page, "A newsletter sign-up service", confirm_first=False)
    expect(page.locator("#task-status")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#panel-requirements_analysis h1, #panel-requirements_analysis h2").first).to_be_visible()
    with page.expect_download() as download:
        page.get_by_role("link", name="Download all (.zip)").click()
    assert "REQUIREMENTS.md" in zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes())).namelist()
    assert w.errors == []  # in particular, no request was sent only to be refused


def test_a_failed_task_shows_what_went_wrong(start_server, open_page):
    server = start_server(
        llm_provider="openai",
        openai_base_url=f"http://127.0.0.1:{free_port()}/v1",
        llm_model="m",
        llm_timeout_s=3,
        llm_max_retries=0,
    )
    w = open_page(server.url + "/test-ui")
    page = w.page
    submit(page, "A podcast hosting site", confirm_first=False)
    expect(page.locator("#task-status")).to_have_attribute("data-status", "failed")
    expect(page.locator('.agent[data-agent="ProductManager"]')).to_have_attribute("data-state", "failed")
    expect(page.get_by_role("alert")).to_contain_text("Could not connect to the model endpoint")
    expect(page.locator('#log li[data-type="error"]')).to_have_count(1)
    expect(page.locator("#cancel")).to_be_hidden()
    assert w.errors == []


def test_the_server_restarting_is_shown_and_the_page_resumes_when_it_is_back(start_server, open_page, tmp_path):
    data = tmp_path / "data"
    server = start_server(data_dir=data, sse_heartbeat_s=0.5)
    w = open_page(server.url + "/test-ui")
    page = w.page
    task_id = submit(page, "A tool library for a neighbourhood", confirm_first=True)
    expect(page.get_by_role("dialog")).to_be_visible()
    page.get_by_role("button", name="Decide later").click()
    before = httpx.get(f"{server.url}/api/task/{task_id}/status").json()["last_sequence"]
    server.stop()  # SIGTERM: every open stream gets the `shutdown` event, then the process exits
    expect(page.locator("#conn")).to_have_attribute("data-state", "restarting")
    expect(page.locator("#conn")).to_have_text("server restarting, will reconnect…")
    again = start_server(data_dir=data, port=server.port, sse_heartbeat_s=0.5)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(page.locator("#task-status")).to_have_attribute("data-status", "awaiting_confirmation")
    page.get_by_role("button", name="Review analysis").click()
    page.get_by_role("dialog").get_by_role("button", name="Approve").click()
    expect(page.locator("#task-status")).to_have_attribute("data-status", "succeeded")
    last = httpx.get(f"{again.url}/api/task/{task_id}/status").json()["last_sequence"]
    assert last > before
    assert_complete_log(page, last)
    # The browser reported the refused connections while the server was down; the page raised nothing.
    assert w.network_failures_only() == []


def test_tokens_cost_and_the_budget_are_shown_per_agent_task_and_in_the_recent_list(start_server, open_page):
    server = start_server(
        llm_prices='{"scripted-test-double": {"input": 3, "output": 12, "currency": "USD"}}',
        max_tokens_per_task=1_000_000,
        scripted_token_delay_ms=1,
    )
    w = open_page(server.url + "/test-ui")
    page = w.page
    task_id = submit(page, "A birthday reminder service", confirm_first=False)
    expect(page.locator("#task-status")).to_have_attribute("data-status", "succeeded")
    usage = httpx.get(f"{server.url}/api/task/{task_id}/status").json()["usage"]
    for name in AGENTS:
        mine = usage["agents"][name]
        expect(page.locator(f'.agent[data-agent="{name}"] .usage')).to_have_text(
            f"{mine['total_tokens']:,} tokens · {mine['cost']:.6f} USD"
            if mine["cost"] < 0.01
            else f"{mine['total_tokens']:,} tokens · {mine['cost']:.4f} USD"
        )
    total = usage["total"]
    expect(page.locator("#task-usage")).to_contain_text(f"Task: {total['total_tokens']:,} tokens · ")
    expect(page.locator("#budget-label")).to_have_text(f"Budget: {total['total_tokens']:,} of 1,000,000 tokens")
    assert abs(float(page.locator("#budget-meter").evaluate("m => m.value")) - total["total_tokens"] / 1e6) < 1e-9
    expect(page.locator(f'#recent-list a[data-task="{task_id}"] .usage')).to_contain_text(
        f"{total['total_tokens']:,} tokens · "
    )
    assert w.errors == []


def test_a_budget_set_in_the_form_stops_the_task_and_the_bar_shows_it_passed(server, open_page):
    w = open_page(server.url + "/test-ui")
    page = w.page
    page.get_by_label("Token budget (optional)").fill("400")  # the ProductManager alone needs more
    task_id = submit(page, "A carpool planner for a school", confirm_first=False)
    expect(page.locator("#task-status")).to_have_attribute("data-status", "failed")
    expect(page.get_by_role("alert")).to_contain_text("budget of 400 tokens (budget.max_tokens)")
    expect(page.locator("#budget")).to_have_attribute("data-over", "true")
    expect(page.locator("#budget-label")).to_have_text("Budget: 401 of 400 tokens")
    status = httpx.get(f"{server.url}/api/task/{task_id}/status").json()
    assert status["budget"]["max_tokens"] == 400 and status["usage"]["total"]["total_tokens"] == 401
    assert w.errors == []


def test_fix_rounds_versions_and_diffs_are_shown(start_server, open_page):
    server = start_server(scripted_gaps=True)
    w = open_page(server.url + "/test-ui")
    page = w.page
    task_id = submit(page, "A shop with a cart, payments and order history", confirm_first=False)
    expect(page.locator("#task-status")).to_have_attribute("data-status", "succeeded")
    for name in AGENTS:  # each agent's draft had gaps, and its rewrite passed
        expect(page.locator(f'.agent[data-agent="{name}"] .check')).to_have_text("check passed")
    expect(page.locator('#log li[data-type="check"]')).to_have_count(8)
    expect(page.locator('#log li[data-type="check"]').first).to_contain_text("rewrites it (fix round 1 of 2)")
    page.get_by_role("tab", name="Test plan").click()
    versions = page.get_by_role("group", name="Versions")
    expect(versions.get_by_role("button")).to_have_count(2)
    expect(versions.get_by_role("button").first).to_have_text("v1: first draft · 2 gaps")
    versions.get_by_role("button", name="v1: first draft · 2 gaps").click()
    expect(page.locator("#panel-test_plan")).to_contain_text("REQ-99")
    versions.get_by_role("button", name="v2: fix round 1 · complete").click()
    page.get_by_role("button", name="Show changes from v1").click()
    expect(page.locator("#panel-test_plan del").first).to_contain_text("REQ-99")
    expect(page.locator("#panel-test_plan ins").first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "test-ui-versions.png", full_page=True)
    assert httpx.get(f"{server.url}/api/task/{task_id}/result").json()["traceability"]["verdict"] == "GO"
    assert w.errors == []


def test_the_confirmation_shows_what_changed_since_the_last_review(server, open_page):
    w = open_page(server.url + "/test-ui")
    page = w.page
    submit(page, "A shared shopping list with categories", confirm_first=True)
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#changes")).to_be_hidden()  # nothing to compare with yet
    dialog.get_by_label("What should change? (needed to request changes)").fill("Add sharing with family members")
    dialog.get_by_role("button", name="Request changes").click()
    expect(page.locator("#rounds-left")).to_have_text("Revision rounds left: 2")
    expect(page.locator("#changes")).to_be_visible()
    expect(page.locator("#changes-diff ins").filter(has_text="sharing with family members").first).to_be_visible()
    dialog.get_by_role("button", name="Approve").click()
    expect(page.locator("#task-status")).to_have_attribute("data-status", "succeeded")
    assert w.errors == []
