"""A source mapping: where each of the help desk's entities lives and how its fields read.

Each entity is a table or view (or a join), ``from``, and one SQL expression per field.
Expressions must read alike on SQLite, PostgreSQL and MariaDB: no ``||`` (MariaDB's OR)
and no ``CONCAT`` (SQLite before 3.44): values that must be joined (a number like
``it-7``, a link) are put together in Python by the ``formats``, Python format strings
over the ticket's fields (``{id}``, ``{number}``, extra fields, ``{site_url}``;
``{requester_email:url}`` URL-encodes a value).

A mapping file (TOML) has the same shape as the presets (source/presets/)::

    [user]                       # required: id, email
    from = "staff s"
    id = "s.staff_id"
    email = "s.mail"
    first_name = "s.given_name"

    [ticket]                     # required: id, title
    from = "incidents i JOIN queues q ON q.id = i.queue_id"
    id = "i.id"
    title = "i.summary"
    status = "i.state"
    queue_code = "q.code"        # an extra field, for the formats

    [formats]
    number = "{queue_code}-{id}"
    staff_link = "{site_url}/incidents/{id}/"

    [labels.status]
    "1" = "New"

Entities ``user`` and ``ticket`` are required; ``comment``, ``team``, ``membership`` and
``ticket_cc`` are optional (without one, there is no such thing in the help desk).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..config import read_toml
from ..errors import ConfigError

#: per entity: its fields and the expression each reads when the mapping does not say
#: (None: the mapping must give it). A flag (``is_*``, ``notify_*``) is a condition, as
#: a WHERE clause takes it on every database: ``u.level >= 3``, not an integer column.
ENTITY_FIELDS: dict[str, dict[str, str | None]] = {
    "user": {"id": None, "email": None, "username": "NULL", "first_name": "NULL",
             "last_name": "NULL", "is_active": "1 = 1", "is_manager": "1 = 0", "locale": "NULL",
             "time_zone": "NULL"},
    "ticket": {"id": None, "title": None, "number": "NULL", "description": "NULL",
               "status": "NULL", "priority": "NULL", "requester_id": "NULL",
               "requester_email": "NULL", "assignee_id": "NULL", "team_id": "NULL",
               "due_at": "NULL", "created_at": "NULL", "access_key": "NULL"},
    "comment": {"id": None, "ticket_id": None, "body": None, "author_id": "NULL",
                "is_internal": "1 = 0", "created_at": "NULL"},
    "team": {"id": None, "name": "NULL", "notify_team": "1 = 0", "cc_on_create": "NULL",
             "cc_on_update": "NULL", "notify_ticket_ccs": "1 = 0", "reply_to": "NULL",
             "locale": "NULL"},
    "membership": {"team_id": None, "user_id": None},
    "ticket_cc": {"ticket_id": None, "user_id": "NULL", "email": "NULL"},
}
REQUIRED_ENTITIES = ("user", "ticket")
EXTRA_FIELDS = frozenset({"user", "ticket"})
"""Entities that may carry fields of their own (a user's email switches, a queue slug)."""
FORMATS = {"number": "{number}", "tag": "", "staff_link": "{site_url}/tickets/{id}/",
           "requester_link": "", "in_app_link": "/tickets/{id}/"}
"""The formats a mapping may set, with their defaults: the ticket number (when it is
not a field), the tag a subject starts with (a reply's tracking tag), the links: for
staff, for the requester (default: the staff link), and in-app (relative)."""
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


@dataclass(frozen=True)
class Entity:
    """One entity: rows ``FROM source``, one SQL expression per field."""

    name: str
    source: str
    fields: Mapping[str, str]
    extra: tuple[str, ...] = ()
    """The fields beyond the standard ones (kept in the loaded object's ``extra``)."""

    def select(self) -> str:
        columns = ", ".join(f"{expression} AS {name}" for name, expression
                            in self.fields.items())
        return f"SELECT {columns} FROM {self.source}"


@dataclass(frozen=True)
class SourceMapping:
    name: str
    entities: Mapping[str, Entity]
    formats: Mapping[str, str] = field(default_factory=lambda: dict(FORMATS))
    status_labels: Mapping[str, str] = field(default_factory=dict)
    priority_labels: Mapping[str, str] = field(default_factory=dict)
    closed_statuses: tuple[Any, ...] = ()
    """Stored statuses that are never overdue, typed as the status column is."""

    def entity(self, name: str) -> Entity | None:
        return self.entities.get(name)


class _Formatter(string.Formatter):
    """``{field}`` as text; ``{field:url}`` URL-encoded (a query value)."""

    def format_field(self, value: Any, format_spec: str) -> str:
        text = "" if value is None else str(value)
        if format_spec == "url":
            return quote(text, safe="")
        return super().format_field(text, format_spec)


FORMATTER = _Formatter()


def fill(template: str, values: Mapping[str, Any]) -> str:
    """A format of the mapping with the ticket's values."""
    return FORMATTER.vformat(template, (), values)


def parse_mapping(name: str, data: Mapping[str, Any], where: str) -> SourceMapping:
    """A SourceMapping from a mapping's tables (a TOML file's, or a preset's); a mistake
    is a ConfigError naming the table and key in ``where``."""
    unknown = set(data) - set(ENTITY_FIELDS) - {"formats", "labels", "closed_statuses"}
    if unknown:
        raise ConfigError(f"{where} has an unknown table {sorted(unknown)[0]!r}: the tables "
                          f"are {', '.join(ENTITY_FIELDS)}, formats, labels, closed_statuses.")
    entities = {}
    for entity, defaults in ENTITY_FIELDS.items():
        table = data.get(entity)
        if table is None:
            if entity in REQUIRED_ENTITIES:
                raise ConfigError(f"{where} has no [{entity}] table: map where the help "
                                  f"desk's {entity}s are (from = ..., id = ...).")
            continue
        entities[entity] = _entity(entity, table, defaults, where)
    formats = dict(FORMATS)
    for key, value in dict(data.get("formats", {})).items():
        if key not in FORMATS or not isinstance(value, str):
            raise ConfigError(f"{where}: [formats] {key!r} is not a format (known: "
                              f"{', '.join(FORMATS)}), or not text.")
        formats[key] = value
    if "number" not in data["ticket"] and formats["number"] == FORMATS["number"]:
        raise ConfigError(f"{where}: map the ticket's number ([ticket] number = ...) or "
                          "make it ([formats] number = \"...{id}\").")
    labels = dict(data.get("labels", {}))
    return SourceMapping(
        name=name, entities=entities, formats=formats,
        status_labels=_labels(labels.get("status", {}), f"{where} [labels.status]"),
        priority_labels=_labels(labels.get("priority", {}), f"{where} [labels.priority]"),
        closed_statuses=tuple(data.get("closed_statuses", ())))


def _entity(name: str, table: Any, defaults: Mapping[str, str | None], where: str) -> Entity:
    if not isinstance(table, Mapping) or not isinstance(table.get("from"), str):
        raise ConfigError(f"{where}: [{name}] needs from = \"a table, a view or a join\".")
    fields: dict[str, str] = {}
    for key, default in defaults.items():
        expression = table.get(key, default)
        if expression is None:
            raise ConfigError(f"{where}: [{name}] needs {key} = \"an SQL expression\".")
        fields[key] = str(expression)
    extra = []
    for key, expression in table.items():
        if key == "from" or key in defaults:
            continue
        if name not in EXTRA_FIELDS or not _NAME.match(key) or not isinstance(expression, str):
            raise ConfigError(f"{where}: [{name}] {key!r} is not a field of a {name} (known: "
                              f"{', '.join(defaults)}).")
        fields[key] = expression
        extra.append(key)
    return Entity(name, table["from"], fields, tuple(extra))


def _labels(table: Any, where: str) -> dict[str, str]:
    if not isinstance(table, Mapping) or not all(isinstance(v, str) for v in table.values()):
        raise ConfigError(f"{where} must map stored values to labels, e.g. \"1\" = \"Open\".")
    return {str(k): v for k, v in table.items()}


def load_mapping_file(path: Path) -> SourceMapping:
    data = read_toml(path, "The source mapping", "set ITSM_SOURCE to contract, "
                     "django-helpdesk, django-spire or a mapping file.")
    return parse_mapping(path.stem, data, f"The source mapping {path}")
