"""`delivery`: the service from a terminal, on top of delivery.client.

    delivery run "开发一个简单的待办事项应用"      # start a task and watch it live
    delivery follow <task_id>                    # join a running (or finished) task
    delivery status|confirm|cancel|download <task_id>

The live view shows the four agents with their state, a progress bar and the current agent's
tokens as they stream; when the ProductManager asks, it prompts to approve or request changes;
Ctrl-C asks whether to cancel the task or detach from it (the task goes on). `--json` prints one
event per line instead, for scripts. Errors are one line on stderr (exit status 1).

Exit status: 0 the task succeeded (or you detached), 1 it failed or the command did, 3 it was
cancelled.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.prompt import Prompt
from rich.table import Table
from rich.text import Text

from delivery.client import DeliveryClient, DeliveryError, Event

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3
TOKEN_LINES = 8  # how much of the current agent's writing the view shows

_STATE_STYLE = {"waiting": ("○", "dim"), "working": ("●", "bold yellow"), "done": ("✓", "green")}


class LiveView:
    """What the terminal shows of one task, updated event by event (rich renders it)."""

    def __init__(self, task_id: str, agents: list[tuple[str, str]]) -> None:
        self.task_id = task_id
        self.agents = agents  # (name, document file) in pipeline order
        self.state = {name: "waiting" for name, _ in agents}
        self.note = {name: "" for name, _ in agents}
        self.status = "queued"
        self.current: str | None = None
        self.tokens = ""
        self.completed, self.total = 0, len(agents)
        self.last_sequence = 0

    def apply(self, event: Event) -> None:
        self.last_sequence = event.sequence
        kind, agent, meta = event.event_type, event.agent_name, event.metadata or {}
        if kind == "start":
            self.status = "running"
            self.total = int(meta.get("total_steps", self.total))
        elif kind == "agent_start" and agent in self.state:
            self.current, self.tokens = agent, ""
            self.state[agent], self.note[agent] = "working", ""
            self.status = "running"
        elif kind == "thought":
            self.tokens = (self.tokens + event.content)[-4000:]
        elif kind == "model_retry":  # the call's text so far is void: its next attempt starts over
            self.tokens = ""
        elif kind == "check" and agent in self.note:
            gaps = meta.get("gaps") or []
            self.note[agent] = "check passed" if meta.get("passed") else f"fixing {len(gaps)} gap(s)"
        elif kind == "step_end" and agent in self.state:
            self.state[agent] = "done"
            self.completed = int(meta.get("completed_steps", self.completed))
            tokens = (meta.get("usage") or {}).get("total_tokens")
            self.note[agent] = f"{tokens} tokens" if tokens is not None else ""
        elif kind == "awaiting_confirmation":
            self.status = "awaiting confirmation"
        elif kind == "confirmed":
            self.status = "running"
        elif event.terminal:
            self.status = {"end": "succeeded", "error": "failed", "cancelled": "cancelled"}[kind]
            self.current = None

    def __rich__(self) -> RenderableType:
        agents = Table.grid(padding=(0, 2))
        for name, document in self.agents:
            mark, style = _STATE_STYLE[self.state[name]]
            agents.add_row(Text(mark, style), Text(name, style), Text(document, "dim"), Text(self.note[name], "dim"))
        progress = Table.grid(padding=(0, 1))
        progress.add_row(
            ProgressBar(total=max(self.total, 1), completed=self.completed, width=40),
            Text(f"{self.completed}/{self.total} steps · {self.status}"),
        )
        parts: list[RenderableType] = [Text(f"Task {self.task_id}", "bold"), agents, progress]
        if self.current:
            lines = self.tokens.splitlines()[-TOKEN_LINES:]
            parts.append(Panel(Text("\n".join(lines)), title=f"{self.current} is writing", title_align="left"))
        return Group(*parts)


# -- following a task -------------------------------------------------------------------------


class Follower:
    """Follows one task to its end in the terminal: live view, confirmation prompt, Ctrl-C."""

    def __init__(self, client: DeliveryClient, console: Console, args: argparse.Namespace) -> None:
        self.client, self.console, self.args = client, console, args
        self.interactive = console.is_terminal and sys.stdin.isatty()

    def follow(self, task_id: str, after: int = 0) -> int:
        if self.args.json:
            return self._print_json(task_id, after)
        known = self.client.status(task_id)  # an unknown task: one line, before any view is drawn
        agents = [(a.name, a.filename) for a in self.client.crew()]
        view = LiveView(task_id, agents)
        view.status = known.status
        view.last_sequence = after
        while True:
            try:
                ending = self._watch(view)
            except KeyboardInterrupt:
                choice = self._ask_on_interrupt(task_id)
                if choice == "detach":
                    self.console.print(f"Detached; task {task_id} goes on. Rejoin it with: delivery follow {task_id}")
                    return EXIT_OK
                if choice == "cancel":
                    self.client.cancel(task_id)
                continue  # resume watching from the last event seen (the cancel's end included)
            return self._finish(view, ending)

    def _watch(self, view: LiveView) -> Event:
        with Live(view, console=self.console, refresh_per_second=8, transient=False) as live:
            for event in self.client.events(view.task_id, after=view.last_sequence):
                view.apply(event)
                live.refresh()
                if event.event_type == "awaiting_confirmation":
                    live.stop()
                    self._confirm(event)
                    live.start()
                if event.terminal:
                    return event
        raise DeliveryError(f"task {view.task_id}: its stream ended without a final event; run delivery follow again.")

    def _confirm(self, event: Event) -> None:
        task_id = event.task_id
        analysis = event.content.split("\n\n---", 1)[0]
        self.console.print(Panel(Markdown(analysis), title="The ProductManager asks you to confirm the analysis"))
        if not self.interactive:
            self.console.print(
                f"Waiting for an answer: delivery confirm {task_id} (or --changes 'what to change') from another shell."
            )
            return
        rounds_left = int((event.metadata or {}).get("revision_rounds_left", 1))
        choices = ["approve", "changes", "wait"] if rounds_left > 0 else ["approve", "wait"]
        answer = Prompt.ask(
            "Approve it, request changes, or leave it waiting"
            if rounds_left > 0
            else "No revision rounds left: approve it, or leave it waiting",
            choices=choices,
            default="approve",
            console=self.console,
        )
        try:
            if answer == "approve":
                self.client.confirm(task_id, approved=True)
            elif answer == "changes":
                feedback = ""
                while not feedback.strip():
                    feedback = Prompt.ask("What should change", console=self.console)
                self.client.confirm(task_id, approved=False, feedback=feedback)
            else:
                self.console.print(f"Still waiting; answer later with: delivery confirm {task_id}")
        except DeliveryError as refused:  # e.g. it was cancelled or timed out meanwhile
            self.console.print(Text(f"Not recorded: {refused}", "yellow"))

    def _ask_on_interrupt(self, task_id: str) -> str:
        if not self.interactive:
            return "detach"
        try:
            return Prompt.ask(
                f"\nCancel task {task_id}, detach (it goes on), or keep watching",
                choices=["cancel", "detach", "watch"],
                default="detach",
                console=self.console,
            )
        except (KeyboardInterrupt, EOFError):
            return "detach"  # a second Ctrl-C: leave the task alone

    def _finish(self, view: LiveView, ending: Event) -> int:
        meta = ending.metadata or {}
        if not self.console.is_terminal:
            self.console.line()  # a redirected live view ends without one
        if ending.event_type == "error":
            self.console.print(Text(f"Task failed: {ending.content}", "bold red"))
            return EXIT_FAILED
        if ending.event_type == "cancelled":
            self.console.print(Text(f"Task cancelled: {ending.content}", "yellow"))
            return EXIT_CANCELLED
        verdict = meta.get("verdict", "?")
        self.console.print(Text(f"Verdict: {verdict}", "bold green" if verdict == "GO" else "bold yellow"))
        self.console.print(ending.content)
        if not self.args.no_download:
            folder = self.client.download(view.task_id, self.args.out or f"delivery-{view.task_id[:8]}")
            files = ", ".join(sorted(p.name for p in folder.glob("*.md")))
            self.console.print(f"Deliverables saved in {folder}/ ({files}, deliverables.zip)")
        return EXIT_OK

    def _print_json(self, task_id: str, after: int) -> int:
        last: Event | None = None
        try:
            for event in self.client.events(task_id, after=after):
                print(event.model_dump_json(exclude_none=True), flush=True)
                last = event
        except KeyboardInterrupt:
            return EXIT_OK  # a script stopping to read: the task goes on
        return _exit_for(last)


def _exit_for(last: Event | None) -> int:
    if last is None or last.event_type == "end":
        return EXIT_OK
    return EXIT_CANCELLED if last.event_type == "cancelled" else EXIT_FAILED


# -- commands ---------------------------------------------------------------------------------


def _run(client: DeliveryClient, console: Console, args: argparse.Namespace) -> int:
    requirement = sys.stdin.read() if args.requirement == "-" else args.requirement
    task = client.run(
        requirement,
        skip_confirmation=args.yes,
        priority=args.priority,
        max_tokens=args.max_tokens,
        max_cost=args.max_cost,
    )
    if not args.json:
        console.print(f"Started task {task.task_id} on {client.base_url}")
    return Follower(client, console, args).follow(task.task_id)


def _follow(client: DeliveryClient, console: Console, args: argparse.Namespace) -> int:
    return Follower(client, console, args).follow(args.task_id, after=args.after)


def _status(client: DeliveryClient, console: Console, args: argparse.Namespace) -> int:
    status = client.status(args.task_id)
    if args.json:
        print(status.model_dump_json())
        return EXIT_OK
    total = status.usage.get("total", {})
    console.print(
        f"{status.task_id}: {status.status}, step {status.completed_steps}/{status.total_steps}"
        + (f", {status.current_agent} working" if status.current_agent else "")
        + f", {total.get('total_tokens', 0)} tokens"
        + (f" — {status.error}" if status.error else ""),
        markup=False,
    )
    return EXIT_OK


def _confirm(client: DeliveryClient, console: Console, args: argparse.Namespace) -> int:
    answer = client.confirm(args.task_id, approved=args.changes is None, feedback=args.changes)
    console.print(answer.message, markup=False)
    return EXIT_OK


def _cancel(client: DeliveryClient, console: Console, args: argparse.Namespace) -> int:
    console.print(client.cancel(args.task_id).message, markup=False)
    return EXIT_OK


def _download(client: DeliveryClient, console: Console, args: argparse.Namespace) -> int:
    folder = client.download(args.task_id, args.out or f"delivery-{args.task_id[:8]}")
    console.print(f"Deliverables saved in {folder}/", markup=False)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the service (default: $DELIVERY_URL, else http://127.0.0.1:8000)")
    common.add_argument("--api-key", help="when the server has API_KEYS on (default: $DELIVERY_API_KEY)")
    watching = argparse.ArgumentParser(add_help=False)
    watching.add_argument("--json", action="store_true", help="print one event per line (JSON) instead of the view")
    watching.add_argument("--out", help="where to save the deliverables (default: ./delivery-<task id>)")
    watching.add_argument("--no-download", action="store_true", help="do not save the deliverables at the end")

    top = argparse.ArgumentParser(prog="delivery", description="Run and watch the multi-agent delivery crew.")
    commands = top.add_subparsers(dest="command", required=True, metavar="command")
    run = commands.add_parser("run", parents=[common, watching], help="start a task and watch it live")
    run.add_argument("requirement", help="what to build ('-' reads it from stdin)")
    run.add_argument("-y", "--yes", action="store_true", help="skip the confirmation after the analysis")
    run.add_argument("--priority", choices=["low", "normal", "high"], default="normal")
    run.add_argument("--max-tokens", type=int, help="stop the task past this many tokens")
    run.add_argument("--max-cost", type=float, help="stop the task past this cost")
    run.set_defaults(handler=_run)
    follow = commands.add_parser("follow", parents=[common, watching], help="join a task and watch it")
    follow.add_argument("task_id")
    follow.add_argument("--after", type=int, default=0, help="start after this event (sequence)")
    follow.set_defaults(handler=_follow)
    status = commands.add_parser("status", parents=[common], help="one line about a task")
    status.add_argument("task_id")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)
    confirm = commands.add_parser("confirm", parents=[common], help="approve the analysis (or --changes)")
    confirm.add_argument("task_id")
    confirm.add_argument("--changes", metavar="FEEDBACK", help="request changes instead of approving")
    confirm.set_defaults(handler=_confirm)
    cancel = commands.add_parser("cancel", parents=[common], help="stop a task")
    cancel.add_argument("task_id")
    cancel.set_defaults(handler=_cancel)
    download = commands.add_parser("download", parents=[common], help="save a finished task's deliverables")
    download.add_argument("task_id")
    download.add_argument("--out")
    download.set_defaults(handler=_download)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # soft_wrap: a message with a command in it stays one line, whatever the terminal's width
    console = Console(highlight=False, soft_wrap=True)
    try:
        with DeliveryClient(args.url, args.api_key) as client:
            return int(args.handler(client, console, args))
    except DeliveryError as exc:
        print(f"delivery: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
