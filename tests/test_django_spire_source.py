"""The ``django-spire`` source end to end, seed 001's behaviour: django-spire 1.3.0's own
schema (its migrations) and its own service making the ticket, with itsm-notify's Django
app installed in the site (its receiver writes the event, spire's own notifications
off); the tool run with ``ITSM_SOURCE=django-spire``; the email at the real SMTP test
server and the in-app notifications read back by spire's own bell.

spire runs in its own Python >= 3.12 virtualenv (``spire_python``; skipped with the
reason where there is none); every test runs on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import json
from pathlib import Path

from contract_app import run_cli, smtp_env
from django_apps.spire import run_spire
from smtp_server import SmtpSink

SITE = "https://spire.example.com"


def test_a_new_ticket_tells_developers_by_email_and_managers_in_app(
        database_url: str, spire_python: Path, smtp_sink: SmtpSink) -> None:
    facts = run_spire(spire_python, database_url, "scenario", "--itsm-notify")
    people, ticket_id = facts["people"], facts["ticket_id"]
    # spire's own notifications are off; the receiver wrote one event, as it happened,
    # and the later edit wrote none
    assert facts["notifications_after_create"] == facts["notifications_after_edit"] == []
    [event] = facts["outbox"]
    assert (event["event_type"], event["ticket_id"], event["actor_id"]) \
        == ("ticket_created", str(ticket_id), str(people["requester"]))
    assert json.loads(event["payload"]) == {"status": "read", "priority": "high"}

    env = smtp_env(database_url, smtp_sink, ITSM_SOURCE="django-spire", SITE_URL=SITE,
                   ADMINS="Dev One <dev@example.com>",
                   DEFAULT_FROM_EMAIL="Help Desk <helpdesk@example.com>")
    for command in (["db", "init"], ["send-pending"]):
        result = run_cli(command, env)
        assert result.exit_code == 0, result.output + result.stderr

    # email: the developers (ADMINS), once per address, with the absolute link
    [email] = smtp_sink.messages
    assert email.rcpt_tos == ["dev@example.com"]
    detail = f"/django_spire/help_desk/page/detail/{ticket_id}/"
    text = email.message.get_body(("plain",)).get_content()
    assert f"{SITE}{detail}" in text
    assert "High" in text and "Ready" in text  # spire's labels, not "high" and "read"
    assert f"#{ticket_id}" in email.subject

    # in-app, where spire's bell reads it, with the relative link: developers (active
    # accounts with the address) and managers (delete_helpdeskticket through a group)
    told = {"developer", "group_manager", "two_group_manager"}
    for role, user_id in people.items():
        bell = run_spire(spire_python, database_url, "bell", str(user_id))
        shown = [(note["url"]) for note in bell["notifications"]]
        if role in told:
            assert bell["has_new_notifications"] is True, role
            assert shown == [detail], role  # once, even in two groups or as both
        else:
            assert shown == [], role
