"""``itsm-notify preview``: the gallery of every email in every language, ``--event ID``,
``--serve``, and the pages as headless Chromium renders them."""

from __future__ import annotations

import email
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from datetime import datetime
from email import policy
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract_app import (
    add_comment,
    add_event,
    cli_env,
    create_schema,
    deliveries,
    outbox_states,
    run_cli,
    seed_helpdesk,
)
from itsm_notify.compose.i18n import Languages, available_languages
from itsm_notify.config import load_settings
from itsm_notify.events.types import EVENT_TYPES
from itsm_notify.ops.preview import sample_pages, write_gallery

pytestmark = pytest.mark.timeout(180)

EMAILS = [*EVENT_TYPES, "test_email"]
LANGUAGES = available_languages()


def gallery(tmp_path: Path, *args: str, env: dict[str, str] | None = None
            ) -> tuple[Path, dict[str, Any]]:
    """Run ``preview --json`` into a new folder; the folder and what it printed."""
    out = tmp_path / "gallery"
    result = run_cli(["preview", "--out", str(out), "--json", *args], env)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return out, data


def page_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def srcdoc(page: str) -> str:
    """The HTML part as the page's iframe holds it (unescaped)."""
    found = re.search(r'<iframe [^>]*srcdoc="([^"]*)"', page)
    assert found, "the page has no iframe with the HTML part"
    return html.unescape(found.group(1))


def text_part(page: str) -> str:
    found = re.search(r'<pre class="text">(.*?)</pre>', page, re.DOTALL)
    assert found, "the page has no text part"
    return html.unescape(found.group(1))


# ------------------------------------------------------------------ the samples


def test_a_page_for_every_email_in_every_language(tmp_path: Path) -> None:
    out, data = gallery(tmp_path)
    written = {(row["email"], row["language"]): row for row in data["pages"]}
    assert set(written) == {(name, code) for name in EMAILS for code in LANGUAGES}
    assert data["problems"] == []
    index = page_text(out / "index.html")
    for (name, code), row in written.items():
        path = Path(row["path"])
        assert path == out / f"{name}.{code}.html" and path.is_file()
        assert f'href="{name}.{code}.html"' in index
        page = page_text(path)
        eml = email.message_from_bytes((out / f"{name}.{code}.eml").read_bytes(),
                                       policy=policy.default)
        subject = str(eml["Subject"])
        assert row["subject"] == subject and subject.strip()
        # the subject, the headers, the HTML part and the text part, as sent
        assert html.escape(subject.strip(), quote=False) in page
        for header in ("From", "To", "Date", "Message-ID", "X-ITSM-Event"):
            assert f"<dt>{header}</dt>" in page
        plain, rich = eml.get_body(("plain",)), eml.get_body(("html",))
        assert plain is not None and rich is not None
        assert text_part(page) == plain.get_content().replace("\r\n", "\n")
        assert srcdoc(page) == rich.get_content().replace("\r\n", "\n")
        # links: back to the index, and to this email in every other language
        assert 'href="index.html"' in page
        for other in LANGUAGES:
            if other != code:
                assert f'href="{name}.{other}.html"' in page


def test_the_samples_are_realistic(tmp_path: Path) -> None:
    out, _ = gallery(tmp_path, "--language", "en")
    created = page_text(out / "ticket_created.en.html")
    assert "VPN drops every 10 minutes on the 3rd floor" in created
    assert "Bob Okafor &lt;bob.okafor@example.com&gt;" in created  # To: the assignee
    comment = text_part(page_text(out / "comment_added.en.html"))
    assert "Hi Alice," in comment
    assert "we found the cause" in comment and "Thanks," in comment  # several lines
    overdue = text_part(page_text(out / "overdue.en.html"))
    for span in ("3 days overdue", "5 hours overdue", "40 minutes overdue"):
        assert span in overdue
    assert "Due Soon: VPN drops every 10 minutes" in page_text(out / "due_soon.en.html")
    summary = page_text(out / "summary.en.html")
    assert "Hourly summary: 3 updates on 2 tickets" in summary
    assert "TKT-1042" in text_part(summary) and "TKT-1031" in text_part(summary)
    assert "Test email from Help Desk" in page_text(out / "test_email.en.html")


def test_samples_need_no_database_and_no_mail_server(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {"EMAIL_BACKEND": "smtp", "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(port),
           "DATABASE_URL": f"sqlite:///{tmp_path}/never.db"}
    gallery(tmp_path, env=env)
    assert not (tmp_path / "never.db").exists()


def test_language_switch_links_between_languages(tmp_path: Path) -> None:
    """With two languages, each page links to its twin and the index to both (the
    second one may fall back to English text until its catalog ships)."""
    settings = load_settings({}, environ={}, dotenv_path=None)
    pages = sample_pages(settings, ("en", "de"), datetime(2026, 3, 2, 9, 30))
    write_gallery(tmp_path, pages, site_name="Help Desk", origin="Samples.",
                  now=datetime(2026, 3, 2, 9, 30))
    for name in EMAILS:
        english, german = (page_text(tmp_path / f"{name}.{code}.html") for code in ("en", "de"))
        assert f'href="{name}.de.html"' in english and f'href="{name}.en.html"' in german
        assert '<strong aria-current="page"' in english


def test_an_unknown_language_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    result = run_cli(["preview", "--out", str(tmp_path / "g"), "--language", "xx"])
    assert result.exit_code == 2
    assert "There is no catalog for the language 'xx'" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "g").exists()


def test_a_broken_template_shows_on_its_page_and_exits_1(tmp_path: Path) -> None:
    emails = tmp_path / "overrides" / "emails"
    emails.mkdir(parents=True)
    (emails / "comment_added.html").write_text('{% extends "base.html" %}\n'
                                               "{% block content %}{{ oops( }}{% endblock %}\n")
    out = tmp_path / "g"
    result = run_cli(["preview", "--out", str(out), "--language", "en"],
                     {"ITSM_TEMPLATE_DIR": str(tmp_path / "overrides")})
    assert result.exit_code == 1
    assert "Problem:" in result.stderr and "comment_added.html, line 2" in result.stderr
    page = page_text(out / "comment_added.en.html")
    assert "This email could not be rendered" in page and "line 2" in page
    assert "<iframe" in page_text(out / "ticket_created.en.html")  # the others are fine


# ------------------------------------------------------------------ --event ID


def test_a_real_event_for_each_of_its_recipients(sqlite_url: str, tmp_path: Path) -> None:
    engine = create_schema(sqlite_url)
    ids = seed_helpdesk(engine)
    event_id = add_event(engine, "comment_added", ids["vpn"], ids["bob"],
                         {"comment_id": ids["c_bob"]})
    _, data = gallery(tmp_path, "--event", str(event_id), env=cli_env(sqlite_url))
    rows = data["pages"]
    # bob wrote it; alice asked, erin commented: each gets it, in each language
    assert len(rows) == 2 * len(LANGUAGES)
    to = set()
    for row in rows:
        page = page_text(Path(row["path"]))
        language = Languages().get(row["language"])
        expected = language.gettext("New Comment on Ticket: {title} ({number})").format(
            title="VPN drops every 10 minutes", number="TKT-001")
        # a subject is one line: its spaces (French typography's no-break ones too) plain
        assert row["subject"].split() == expected.split()
        assert "Could you send the VPN client log?" in text_part(page)
        assert "Could you send the VPN client log?" in srcdoc(page)
        to.update(re.findall(r"<dt>To</dt><dd>([^<]*)</dd>", page))
    assert to == {"Alice Lopez &lt;alice@example.com&gt;", "Erin Kowalski &lt;erin@example.com&gt;"}
    # a preview changes nothing
    assert outbox_states(engine) == {event_id: "pending"} and deliveries(engine) == []
    engine.dispose()


def test_an_event_nobody_gets_is_shown_to_a_sample_reader(sqlite_url: str,
                                                           tmp_path: Path) -> None:
    engine = create_schema(sqlite_url)
    ids = seed_helpdesk(engine)
    event_id = add_event(engine, "ticket_assigned", ids["vpn"], ids["bob"],
                         {"assignee_id": ids["bob"]})  # bob took it himself
    engine.dispose()
    _, data = gallery(tmp_path, "--event", str(event_id), "--language", "en",
                      env=cli_env(sqlite_url))
    [row] = data["pages"]
    page = page_text(Path(row["path"]))
    assert "sample reader" in page and "reader@example.com" in page


@pytest.mark.parametrize("case", ["missing", "unknown type", "internal comment"])
def test_an_event_that_cannot_be_previewed_is_one_sentence_and_exit_2(
        case: str, sqlite_url: str, tmp_path: Path) -> None:
    engine = create_schema(sqlite_url)
    ids = seed_helpdesk(engine)
    if case == "missing":
        event_id, expected = 999, "There is no event 999 in notification_outbox"
    elif case == "unknown type":
        event_id = add_event(engine, "ticket_exploded", ids["vpn"], None, {})
        expected = f"Event {event_id} (ticket_exploded) cannot be rendered: unknown event type"
    else:
        note = add_comment(engine, ids["vpn"], ids["carol"], "SECRET", is_internal=True)
        event_id = add_event(engine, "comment_added", ids["vpn"], ids["carol"],
                             {"comment_id": note})
        expected = f"Event {event_id} is an internal comment, which is never emailed"
    engine.dispose()
    result = run_cli(["preview", "--out", str(tmp_path / "g"), "--event", str(event_id)],
                     cli_env(sqlite_url))
    assert result.exit_code == 2
    assert expected in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "g").exists()


# ------------------------------------------------------------------ --serve


def test_serve_shows_the_gallery_on_loopback_until_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "g"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("ITSM_", "EMAIL_", "DATABASE_URL"))
           or key.startswith("ITSM_TEST_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "itsm_notify", "preview", "--serve", "--port", "0", "--out",
         str(out), "--language", "en"], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "Serving the preview on" in line:
                break
        found = re.search(r"(http://127\.0\.0\.1:\d+/)", "".join(lines))
        assert found, "".join(lines)
        url = found.group(1)
        index = httpx.get(url, timeout=10)
        assert index.status_code == 200 and 'href="comment_added.en.html"' in index.text
        page = httpx.get(url + "comment_added.en.html", timeout=10)
        assert page.status_code == 200 and "<iframe" in page.text
        assert httpx.get(url + "nothing.html", timeout=10).status_code == 404
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, rest
    assert "Traceback" not in rest


def test_serve_on_a_port_in_use_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["preview", "--out", str(tmp_path / "g"), "--serve", "--port",
                          str(port), "--language", "en"])
    assert result.exit_code == 2
    assert f"Cannot serve the preview on 127.0.0.1:{port}" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ in a browser


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (CI installs it)")
def test_headless_chromium_renders_the_gallery(tmp_path: Path) -> None:
    out, _ = gallery(tmp_path, "--language", "en")

    def dom(page: str) -> str:
        result = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=2000",
             "--dump-dom", (out / page).as_uri()],
            capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    index = dom("index.html")
    assert "email preview" in index and "<table" in index
    for name in EMAILS:
        assert f'href="{name}.en.html"' in index
    page = dom("comment_added.en.html")
    assert "<iframe" in page and "srcdoc=" in page
    assert "New Comment on Ticket: VPN drops every 10 minutes on the 3rd floor" in page
    assert '<pre class="text">Hi Alice,' in page
    assert 'href="index.html"' in page
