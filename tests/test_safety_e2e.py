"""Issue 6 end to end: what leaves the building, through the real CLI and a real SMTP
server, on every database."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from contract_app import (
    add_comment,
    add_event,
    add_ticket,
    add_user,
    create_schema,
    deliveries,
    outbox_states,
    run_cli,
    seed_helpdesk,
    set_preference,
    smtp_env,
    utcnow,
)
from itsm_notify.storage import schema

SETTINGS = {"SITE_URL": "https://desk.example.com", "SECRET_KEY": "k-123",
            "ADMINS": "Ops <ops@example.com>", "ITSM_SMTP_CONNECTIONS": "1"}


def _all_mail_text(sink) -> str:  # type: ignore[no-untyped-def]
    return "\n".join(m.data.decode("utf-8", "replace") + "\n" +
                     "\n".join(part.get_content() for part in m.message.walk()
                               if part.get_content_maintype() == "text")
                     for m in sink.messages)


def test_internal_comments_never_leave_in_any_email_or_digest(database_url, smtp_sink) -> None:
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    vpn = ids["vpn"]
    with engine.begin() as conn:  # make the ticket overdue too, so the digest lists it
        conn.execute(sa.update(schema.tickets).where(schema.tickets.c.id == vpn)
                     .values(due_at=utcnow() - timedelta(days=2)))
    add_event(engine, "ticket_created", vpn, None, {})
    add_event(engine, "ticket_assigned", vpn, ids["dave"], {"assignee_id": ids["bob"]})
    add_event(engine, "status_changed", vpn, ids["bob"],
              {"old_status": "open", "new_status": "in_progress"})
    add_event(engine, "comment_added", vpn, ids["bob"], {"comment_id": ids["c_bob"]})
    add_event(engine, "comment_added", vpn, ids["frank"], {"comment_id": ids["c_frank_internal"]})
    add_event(engine, "comment_added", vpn, ids["carol"], {"comment_id": ids["c_carol_internal"]})
    env = smtp_env(database_url, smtp_sink, **SETTINGS)
    assert run_cli(["send-pending"], env).exit_code == 0
    assert run_cli(["overdue-scan"], env).exit_code == 0
    subjects = {m.subject for m in smtp_sink.messages}
    assert any(s.startswith("Overdue Ticket") for s in subjects), subjects
    assert {"New Ticket: VPN drops every 10 minutes (TKT-001)",
            "New Comment on Ticket: VPN drops every 10 minutes (TKT-001)"} <= subjects
    assert "SECRET-NOTE" not in _all_mail_text(smtp_sink)
    # ... while staff still see the internal note in-app.
    with engine.connect() as conn:
        bodies = list(conn.execute(sa.select(schema.app_notifications.c.body)).scalars())
    assert any("SECRET-NOTE" in body for body in bodies)
    assert set(outbox_states(engine).values()) == {"done"}


def test_long_text_is_cut_with_a_link_to_the_full_ticket(database_url, smtp_sink) -> None:
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    long_text = "word " * 2000
    ticket = add_ticket(engine, "TKT-050", "Long one", ids["alice"], assignee_id=ids["bob"],
                        description=long_text)
    comment = add_comment(engine, ticket, ids["bob"], "reply " * 2000)
    add_event(engine, "ticket_created", ticket, ids["alice"], {})
    add_event(engine, "comment_added", ticket, ids["bob"], {"comment_id": comment})
    env = smtp_env(database_url, smtp_sink, ITSM_MAX_TEXT_LENGTH="500", **SETTINGS)
    assert run_cli(["send-pending"], env).exit_code == 0
    assert smtp_sink.messages
    for message in smtp_sink.messages:
        html = message.message.get_body(("html",)).get_content()
        text = message.message.get_body(("plain",)).get_content()
        assert "view the full ticket" in html.lower() and "view the full ticket" in text.lower()
        assert f"https://desk.example.com/tickets/{ticket}/" in html
        assert len(text) < 3000


def test_invalid_addresses_are_skipped_with_a_reason(database_url, smtp_sink) -> None:
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    broken = add_user(engine, "broken", "not an address@@example..com", first_name="Bro")
    ticket = add_ticket(engine, "TKT-051", "Printer", ids["alice"], assignee_id=broken)
    add_event(engine, "ticket_created", ticket, None, {})
    result = run_cli(["send-pending"], smtp_env(database_url, smtp_sink, **SETTINGS))
    assert result.exit_code == 0, result.output
    assert sorted(r for m in smtp_sink.messages for r in m.rcpt_tos) == [
        "alice@example.com", "ops@example.com"]
    skipped = [d for d in deliveries(engine) if d["state"] == "skipped"]
    assert [d["recipient"] for d in skipped] == ["not an address@@example..com"]
    assert "not an address" in skipped[0]["last_error"]
    assert set(outbox_states(engine).values()) == {"done"}


def test_preferences_and_unsubscribe_tokens_are_honoured(database_url, smtp_sink) -> None:
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    env = smtp_env(database_url, smtp_sink, **SETTINGS)
    set_preference(engine, ids["bob"], "ticket_created", "in_app", False)
    add_event(engine, "ticket_created", ids["vpn"], None, {})
    assert run_cli(["send-pending"], env).exit_code == 0
    to_alice = smtp_sink.messages_to("alice@example.com")[0].message
    assert to_alice["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = to_alice["List-Unsubscribe"].strip("<>")
    token = link.rstrip("/").rsplit("/", 1)[1]
    # Another user's id is refused; alice's own applies.
    refused = run_cli(["unsubscribe", token, "--user", str(ids["bob"])], env)
    assert refused.exit_code == 1 and "another user" in refused.output
    assert run_cli(["unsubscribe", token, "--user", str(ids["alice"])], env).exit_code == 0
    smtp_sink.clear()
    add_event(engine, "ticket_created", ids["vpn"], None, {})
    assert run_cli(["send-pending"], env).exit_code == 0
    received = sorted(r for m in smtp_sink.messages for r in m.rcpt_tos)
    assert "alice@example.com" not in received and "bob@example.com" in received
    with engine.connect() as conn:
        in_app = list(conn.execute(sa.select(schema.app_notifications.c.user_id)).scalars())
    assert ids["bob"] not in in_app and ids["alice"] in in_app


def test_purge_removes_old_finished_events_and_their_records(database_url, smtp_sink) -> None:
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    old = add_event(engine, "ticket_created", ids["vpn"], None, {})
    env = smtp_env(database_url, smtp_sink, **SETTINGS)
    assert run_cli(["send-pending"], env).exit_code == 0
    recent = add_event(engine, "ticket_created", ids["laptop"], None, {})
    assert run_cli(["send-pending"], env).exit_code == 0
    with engine.begin() as conn:
        conn.execute(sa.update(schema.outbox).where(schema.outbox.c.id == old)
                     .values(processed_at=utcnow() - timedelta(days=40)))
    pending = add_event(engine, "ticket_created", ids["laptop"], None, {})
    result = run_cli(["purge", "--days", "30"], env)
    assert result.exit_code == 0, result.output
    assert set(outbox_states(engine)) == {recent, pending}
    assert {d["event_id"] for d in deliveries(engine)} == {recent}


def test_a_broken_template_override_fails_that_email_not_the_queue(
        sqlite_url, smtp_sink, tmp_path) -> None:
    overrides = tmp_path / "my-templates" / "emails"
    overrides.mkdir(parents=True)
    (overrides / "status_changed.html").write_text("{% extends 'base.html' %}"
                                                   "{% block content %}{{ no_such_variable }}"
                                                   "{% endblock %}")
    engine = create_schema(sqlite_url)
    ids = seed_helpdesk(engine)
    first = add_event(engine, "ticket_created", ids["vpn"], None, {})
    broken = add_event(engine, "status_changed", ids["vpn"], ids["bob"],
                       {"old_status": "open", "new_status": "pending"})
    last = add_event(engine, "comment_added", ids["vpn"], ids["bob"],
                     {"comment_id": ids["c_bob"]})
    env = smtp_env(sqlite_url, smtp_sink, ITSM_TEMPLATE_DIR=str(overrides.parent), **SETTINGS)
    result = run_cli(["send-pending"], env)
    assert result.exit_code == 1
    states = outbox_states(engine)
    assert (states[first], states[broken], states[last]) == ("done", "failed", "done")
    with engine.connect() as conn:
        error = conn.execute(sa.select(schema.outbox.c.last_error)
                             .where(schema.outbox.c.id == broken)).scalar_one()
    assert "could not render the email" in error and "no_such_variable" in error


def test_a_broken_digest_template_fails_that_digest_not_the_scan(
        sqlite_url, smtp_sink, tmp_path) -> None:
    overrides = tmp_path / "my-templates" / "emails"
    overrides.mkdir(parents=True)
    (overrides / "overdue_alert.html").write_text("{{ no_such_variable }}")
    engine = create_schema(sqlite_url)
    ids = seed_helpdesk(engine)
    with engine.begin() as conn:
        conn.execute(sa.update(schema.tickets).where(schema.tickets.c.id == ids["vpn"])
                     .values(due_at=utcnow() - timedelta(days=2)))
    env = smtp_env(sqlite_url, smtp_sink, ITSM_TEMPLATE_DIR=str(overrides.parent), **SETTINGS)
    result = run_cli(["overdue-scan"], env)
    assert result.exit_code == 1
    assert smtp_sink.messages == []
    with engine.connect() as conn:  # the digest failed with its reason, nothing else did
        assert conn.execute(sa.select(schema.outbox.c.state, schema.outbox.c.last_error)
                            .where(schema.outbox.c.event_type == "overdue")).one() == \
            ("failed", "1 of 1 recipients failed: bob@example.com: could not render the "
                       "email (UndefinedError: 'no_such_variable' is undefined)")
