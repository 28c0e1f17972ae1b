"""Model fields and a default that make Django's columns the ones ``itsm-notify db init``
makes (``storage/schema.py``), whatever the project's ``USE_TZ`` and ``TIME_ZONE``.

The tool stores every timestamp as naive UTC: ``timestamp without time zone`` on
PostgreSQL, ``DATETIME(6)`` on MariaDB/MySQL, ``DATETIME`` text on SQLite. Django's own
``DateTimeField`` is ``timestamp with time zone`` on PostgreSQL and converts values
through the connection's time zone (``DATABASES[...]["TIME_ZONE"]``), so the outbox's
timestamp columns use :class:`NaiveUTCDateTimeField` instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper

#: the column type of a naive UTC timestamp, per Django database vendor (storage/schema.py)
NAIVE_TIMESTAMP_TYPES = {
    "postgresql": "timestamp",  # = timestamp without time zone
    "mysql": "datetime(6)",  # MariaDB too
    "sqlite": "datetime",
}


def naive_utc(value: datetime) -> datetime:
    """``value`` as naive UTC: an aware value is converted, a naive one is taken as UTC."""
    if value.tzinfo is not None and value.utcoffset() is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value.replace(tzinfo=None)


class NaiveUTCDateTimeField(models.DateTimeField):
    """A timestamp stored as naive UTC, as the tool's own columns are.

    Written: an aware datetime is converted to UTC; a naive one is taken to be UTC
    already (not local time, even with ``USE_TZ = False``). Read: an aware UTC datetime
    when ``USE_TZ`` is on, a naive UTC one when it is off. The column type does not
    depend on either setting (:data:`NAIVE_TIMESTAMP_TYPES`), and no backend
    conversion through the connection's time zone is applied (the internal type is
    its own, so Django's ``DateTimeField`` converters are not used).
    """

    description = "Date (with time), stored as naive UTC"

    def get_internal_type(self) -> str:
        return "NaiveUTCDateTimeField"

    def db_type(self, connection: BaseDatabaseWrapper) -> str | None:
        try:
            return NAIVE_TIMESTAMP_TYPES[connection.vendor]
        except KeyError:
            raise NotImplementedError(
                f"itsm-notify supports SQLite, PostgreSQL and MariaDB/MySQL, not "
                f"{connection.display_name}") from None

    def get_prep_value(self, value: Any) -> Any:
        value = models.Field.get_prep_value(self, value)  # lazy objects resolved
        if value is None or hasattr(value, "resolve_expression"):
            return value
        if not isinstance(value, datetime):
            value = self.to_python(value)  # "2026-01-01 10:00", a date: as DateTimeField
        return naive_utc(value)

    def get_db_prep_value(self, value: Any, connection: BaseDatabaseWrapper,
                          prepared: bool = False) -> Any:
        if not prepared:
            value = self.get_prep_value(value)
        if isinstance(value, datetime) and connection.vendor == "sqlite":
            # the tool's own text format (storage/schema.py: _SQLiteTimestamp)
            return value.isoformat(" ", "microseconds")
        return value  # psycopg and PyMySQL write a naive datetime as it is

    def from_db_value(self, value: Any, expression: Any,
                      connection: BaseDatabaseWrapper) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite
            value = datetime.fromisoformat(value)
        return self.to_python(value)

    def to_python(self, value: Any) -> Any:
        value = super().to_python(value)
        if isinstance(value, datetime):
            value = naive_utc(value)
            return value.replace(tzinfo=UTC) if settings.USE_TZ else value
        return value


class UtcNow(models.Func):
    """The database's current UTC time as a column default (``db_default``), the SQL
    ``storage/schema.py``'s ``utc_now`` compiles to on each database."""

    template = "CURRENT_TIMESTAMP"  # SQLite: already UTC
    arity = 0
    output_field = NaiveUTCDateTimeField()

    def as_postgresql(self, compiler: Any, connection: BaseDatabaseWrapper,
                      **extra: Any) -> tuple[str, list[Any]]:
        return "(now() AT TIME ZONE 'utc')", []

    def as_mysql(self, compiler: Any, connection: BaseDatabaseWrapper,
                 **extra: Any) -> tuple[str, list[Any]]:
        return "UTC_TIMESTAMP(6)", []


class PlainTextField(models.TextField):
    """A ``TEXT`` column on MariaDB/MySQL too, where Django's ``TextField`` is
    ``longtext``: the type SQLAlchemy's ``Text`` (the tool's schema) creates there."""

    def db_type(self, connection: BaseDatabaseWrapper) -> str | None:
        return "text" if connection.vendor == "mysql" else super().db_type(connection)
