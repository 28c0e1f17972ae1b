"""CSS inlined once per page structure (compose/inline.py) gives exactly what inlining each page
gives: for any value in text and in attributes, for the built-in templates, and for
templates whose values could change the styling (those are inlined page by page).

Pure: no database, no socket.
"""

from __future__ import annotations

import json
from typing import Any

import css_inline
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import DictLoader, Environment, StrictUndefined

from itsm_notify.compose.inline import StructureInliner
from itsm_notify.compose.render import Renderer, recipient_variables
from itsm_notify.events.audience import EmailRecipient
from itsm_notify.events.model import Comment, EventContext, OutboxEvent, Project, Ticket, User
from itsm_notify.events.types import parse_payload

STYLE = ("<style>p { color: red; } .note { font-size: 12px; } td a { color: blue; }"
         " @media (max-width: 600px) { p { color: green !important; } }</style>")
PAGE = ("<html><head><title>{{ title }}</title>" + STYLE + "</head><body>"
        '<p class="note" title="{{ title }}">{{ title }} &amp; more</p>'
        '<table><tr><td><a href="https://x.example/{{ link }}">{{ link }}</a></td></tr>'
        "{% for line in lines %}<tr><td>{{ line }}</td></tr>{% endfor %}</table>"
        "<p>{{ blank }}</p></body></html>")


class CountingInliner:
    def __init__(self) -> None:
        self.real = css_inline.CSSInliner(keep_at_rules=True)
        self.calls = 0

    def inline(self, html: str) -> str:
        self.calls += 1
        return self.real.inline(html)


def environment(structures: StructureInliner, **templates: str) -> Environment:
    return Environment(loader=DictLoader(templates), autoescape=True,
                       undefined=StrictUndefined, finalize=structures.finalize)


def direct(env: Environment, name: str, variables: dict[str, Any]) -> str:
    return css_inline.CSSInliner(keep_at_rules=True).inline(
        env.get_template(name).render(variables))


STRUCTURES = StructureInliner(CountingInliner())
ENV = environment(STRUCTURES, page=PAGE)
values = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(title=values, link=values, lines=st.lists(values, max_size=3),
       blank=st.sampled_from(["", " ", "\t\n"]))
def test_any_value_in_text_and_attributes_inlines_alike(title: str, link: str,
                                                       lines: list[str], blank: str) -> None:
    variables = {"title": title, "link": link, "lines": lines, "blank": blank}
    assert STRUCTURES.render(ENV.get_template("page"), variables) == \
        direct(ENV, "page", variables)


def test_a_structure_is_inlined_once() -> None:
    counting = CountingInliner()
    structures = StructureInliner(counting)
    env = environment(structures, page=PAGE)
    for n in range(20):
        variables = {"title": f"Ticket {n} <urgent> & \"quoted\" — ü", "link": f"t/{n}?a=1&b=2",
                     "lines": ["one", f"two {n}"], "blank": ""}
        assert structures.render(env.get_template("page"), variables) == \
            direct(env, "page", variables)
    assert counting.calls == 2  # the structure, and once the first page itself to compare


def test_a_value_that_decides_styling_is_inlined_page_by_page() -> None:
    counting = CountingInliner()
    structures = StructureInliner(counting)
    env = environment(structures, classed=(
        "<html><head>" + STYLE + '</head><body><p class="{{ kind }}">x</p></body></html>'),
        commented="<html><head>" + STYLE + "</head><body><!-- {{ kind }} --><p>x</p></body>"
                  "</html>",
        styled="<html><head><style>p { color: {{ kind }}; }</style></head><body><p>x</p>"
               "</body></html>")
    for name in ("classed", "commented", "styled"):
        for kind in ("note", "other", "red"):
            assert structures.render(env.get_template(name), {"kind": kind}) == \
                direct(env, name, {"kind": kind})
    assert counting.calls == 3 * 3 + 3  # every page directly, and each structure once


def test_a_value_the_html_parser_rewrites_is_inlined_directly() -> None:
    counting = CountingInliner()
    structures = StructureInliner(counting)
    env = environment(structures, page=PAGE)
    for title in ("a\r\nb", "nul\x00here", "cr\rhere"):
        variables = {"title": title, "link": "l", "lines": [], "blank": ""}
        assert structures.render(env.get_template("page"), variables) == \
            direct(env, "page", variables)
    assert counting.calls == 3


# --------------------------------------------------------------- the built-in templates

USERS = {1: User(1, "alice", "alice@example.com", "Alice", "Lopez"),
         2: User(2, "bob", "bob@example.com", "Bob", "O'Brien")}
PAYLOADS: dict[str, dict[str, Any]] = {
    "ticket_created": {}, "ticket_assigned": {"assignee_id": 2},
    "status_changed": {"old_status": "open", "new_status": "waiting"},
    "comment_added": {"comment_id": 9}}


def context(event_type: str, title: str, description: str, priority: str) -> EventContext:
    ticket = Ticket(id=42, number="TKT-042", title=title, description=description,
                    status="open", priority=priority, requester_id=1, assignee_id=2,
                    project_id=1, due_at=None, created_at=None)
    raw = json.dumps(PAYLOADS[event_type])
    event = OutboxEvent(id=7, event_type=event_type, ticket_id=42, actor_id=2, payload=raw)
    comment = Comment(9, 42, 2, description, False, None) \
        if event_type == "comment_added" else None
    return EventContext(event=event, payload=parse_payload(event_type, raw), ticket=ticket,
                        users=USERS, project=Project(1, "Network"), comment=comment, manager_ids=())


RENDERER = Renderer(__import__("itsm_notify.config", fromlist=["load_settings"]).load_settings(
    {"site_url": "https://desk.example.com"}, environ={}, dotenv_path=None))


@settings(max_examples=120, deadline=None)
@given(event_type=st.sampled_from(sorted(PAYLOADS)), title=values,
       description=st.text(max_size=200),
       priority=st.sampled_from(["low", "medium", "high", "critical", "Urgent!"]))
def test_the_templates_inline_alike(event_type: str, title: str, description: str,
                                    priority: str) -> None:
    ctx = context(event_type, title, description, priority)
    recipient = EmailRecipient("bob@example.com", "Bob O'Brien", "Bob", 2)
    variables = {**RENDERER.event_variables(ctx), **recipient_variables(recipient),
                 "unsubscribe_url": "https://desk.example.com/u/t/",
                 "ticket_url": "https://desk.example.com/tickets/7/"}
    template = RENDERER.templates_for(RENDERER.language())._template(f"{event_type}.html")
    assert RENDERER.structures.render(template, variables) == \
        RENDERER.structures.inliner.inline(template.render(variables))
