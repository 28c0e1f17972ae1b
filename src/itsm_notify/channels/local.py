"""Local transports for development and tests: print each message, or write it to a
folder as an .eml file."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import IO

from ..states import DeliveryState
from .base import Answered, Outcome, Outgoing, RateLimiter, rate_limited

# --------------------------------------------------------------- console and file


def _text_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    return part.get_content() if part is not None else ""


class ConsoleTransport:
    """Prints each message readably: headers, the text part, the HTML part's size."""

    name = "console"
    gave_up: str | None = None  # nothing here can give up

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    def deliver(self, messages: Iterable[Outgoing], limiter: RateLimiter,
                answered: Answered) -> None:
        for out in messages:
            if not limiter.acquire():
                answered(rate_limited(out))
                continue
            msg = out.parsed()
            html = msg.get_body(preferencelist=("html",))
            lines = [f"{'─' * 72}", f"Envelope: {out.sender} → {out.rcpt}"]
            lines += [f"{name}: {value}" for name, value in msg.items()]
            lines += ["", _text_part(msg).rstrip(),
                      f"[text/html alternative: {len(html.get_content()) if html else 0} "
                      "characters]", ""]
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
            answered(Outcome(out.key, DeliveryState.SENT, code=250, detail="printed"))

    def close(self) -> None:
        pass


class FileTransport:
    """Writes one .eml file per message. The file is named after the Message-ID, so a
    retried message replaces its file instead of adding a second one."""

    name = "file"
    gave_up: str | None = None  # nothing here can give up

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def deliver(self, messages: Iterable[Outgoing], limiter: RateLimiter,
                answered: Answered) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for out in messages:
            if not limiter.acquire():
                answered(rate_limited(out))
                continue
            msg_id = str(BytesHeaderParser(policy=policy.default).parsebytes(out.data)
                         ["Message-ID"]).strip("<>")
            name = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in msg_id)
            path = self.folder / f"{name}.eml"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(out.data)
            tmp.replace(path)
            answered(Outcome(out.key, DeliveryState.SENT, code=250, detail=str(path)))

    def close(self) -> None:
        pass
