"""A terminal chat: the conversation is a list of messages, re-rendered through the model's template.

Each turn appends the user's message, renders the whole history with the model's own chat template
(from the GGUF/HF metadata), generates the assistant's reply while printing it as it streams, and
appends the reply, so the next turn sees everything said. `/reset` forgets the history, `/system TEXT`
sets the system prompt, `/quit` ends. The whole history is re-prefilled every turn: simple, and cheap at
chat lengths next to the decode that follows.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from lmforge.infer.generate import stream

HELP = "commands: /reset (new conversation), /system TEXT (set the system prompt), /help, /quit"


@dataclass
class ChatSession:
    model: Any
    system: str | None = None
    max_tokens: int = 512
    sampling: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    compiled: bool = False  # decode with torch.compile (lmforge.infer.compiled)

    def messages(self, user: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history + [{"role": "user", "content": user}]

    def reply(self, user: str) -> Iterable[str]:
        """Stream the assistant's answer to `user`; the exchange joins the history once it is complete."""
        pieces = []
        for piece in stream(
            self.model, self.messages(user), self.max_tokens, compiled=self.compiled, **self.sampling
        ):
            pieces.append(piece)
            yield piece
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": "".join(pieces)}]

    def command(self, line: str) -> str | None:
        """Handle a /command; returns a message to show, or None to quit."""
        name, _, arg = line[1:].partition(" ")
        if name == "reset":
            self.history.clear()
            return "(new conversation)"
        if name == "system":
            self.system = arg.strip() or None
            self.history.clear()
            return f"(system prompt {'set' if self.system else 'cleared'}; new conversation)"
        if name in ("quit", "exit"):
            return None
        return HELP


def run_chat(session: ChatSession, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """The read–generate–print loop. Ctrl-C stops the current answer; Ctrl-D or /quit ends the chat."""
    interactive = stdin.isatty()
    stdout.write(f"lmforge chat — {HELP}\n")
    while True:
        if interactive:
            stdout.write("\n> ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            msg = session.command(line)
            if msg is None:
                break
            stdout.write(msg + "\n")
            continue
        t0, n = time.perf_counter(), 0
        try:
            for piece in session.reply(line):
                stdout.write(piece)
                stdout.flush()
                n += 1
        except KeyboardInterrupt:
            stdout.write(" [stopped]")
        stdout.write("\n")
        if interactive:
            stdout.write(f"\033[2m({n} pieces, {time.perf_counter() - t0:.1f}s)\033[0m\n")
