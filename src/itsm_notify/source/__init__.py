"""The source: the one place that knows the help desk's schema (tables or views).

``ITSM_SOURCE`` names a preset (``contract``, ``django-helpdesk``, ``django-spire``) or a
mapping file for any other schema (source/mapping.py says its shape). Adding a preset is
one entry in ``PRESETS`` below and a module in source/presets/.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import ConfigError
from .base import InAppWriter, Rule, Source, write_app_notifications
from .mapping import SourceMapping, load_mapping_file, parse_mapping
from .presets import contract, django_helpdesk, django_spire
from .writes import SourceWriter

WriterFactory = Callable[[Settings], SourceWriter]


@dataclass(frozen=True)
class Preset:
    mapping: dict[str, Any]
    rules: Mapping[str, Rule] = field(default_factory=dict)
    path: str = ""
    """Where the app's pages are mounted (``{path}`` in its links): ITSM_SOURCE_PATH."""
    write_in_app: InAppWriter = write_app_notifications
    writer: WriterFactory | None = None
    """What inbound mail writes into the app (source/writes.py); None: nothing."""
    replies_become_comments: bool = False
    """Whether a reply by mail becomes a comment (then each email to a user about a
    ticket carries the signed per-user Reply-To that finds its ticket)."""


# The writers import the inbound parsing (classify); only mail intake loads them.
def _contract_writer(settings: Settings) -> SourceWriter:
    from .contract import ContractWriter

    return ContractWriter()


def _django_helpdesk_writer(settings: Settings) -> SourceWriter:
    from .presets.django_helpdesk_writes import DjangoHelpdeskWriter

    return DjangoHelpdeskWriter(settings.inbound_queue)


def _django_spire_writer(settings: Settings) -> SourceWriter:
    from .presets.django_spire_writes import DjangoSpireWriter

    return DjangoSpireWriter()


PRESETS: dict[str, Preset] = {
    "contract": Preset(contract.MAPPING, writer=_contract_writer,
                       replies_become_comments=True),
    "django-helpdesk": Preset(django_helpdesk.MAPPING, django_helpdesk.RULES,
                              django_helpdesk.PATH, writer=_django_helpdesk_writer,
                              replies_become_comments=True),
    "django-spire": Preset(django_spire.MAPPING, django_spire.RULES, django_spire.PATH,
                           django_spire.write_in_app, writer=_django_spire_writer),
}


def load_writer(settings: Settings) -> SourceWriter:
    """What inbound mail writes through, for the configured source. Raises ConfigError
    for a source without one (a mapping file: the tool knows how to read its schema,
    not how the app writes)."""
    preset = PRESETS.get(settings.source)
    if preset is None or preset.writer is None:
        raise ConfigError(f"Inbound mail writes comments and tickets only into the contract, "
                          f"django-helpdesk and django-spire sources, and ITSM_SOURCE is "
                          f"{settings.source!r}: leave ITSM_INBOUND_URL unset and do not "
                          f"pipe mail to 'itsm-notify receive'.")
    return preset.writer(settings)


def replies_become_comments(settings: Settings) -> bool:
    """Whether a reply by mail becomes a comment in the configured source."""
    preset = PRESETS.get(settings.source)
    return preset is not None and preset.replies_become_comments


def load_source(settings: Settings) -> Source:
    """The configured source, its labels and closed statuses as the settings override
    them. Raises ConfigError for an unknown preset or a wrong mapping file."""
    preset = PRESETS.get(settings.source)
    if preset is not None:
        mapping = parse_mapping(settings.source, preset.mapping, f"The {settings.source} preset")
    elif settings.source.endswith(".toml"):
        mapping = load_mapping_file(Path(settings.source))
        preset = Preset({})
    else:
        raise ConfigError(f"ITSM_SOURCE is {settings.source!r}: use contract, django-helpdesk, "
                          "django-spire, or the path of a mapping file (.toml).")
    return Source(_overridden(mapping, settings), settings, rules=preset.rules,
                  write_in_app=preset.write_in_app,
                  path=preset.path if settings.source_path is None else settings.source_path)


def _overridden(mapping: SourceMapping, settings: Settings) -> SourceMapping:
    """The mapping with the settings' labels and closed statuses (typed as the mapping's
    own: a closed status of an integer column is an integer)."""
    closed: tuple[Any, ...] = mapping.closed_statuses
    if settings.closed_statuses:
        numbers = bool(closed) and all(isinstance(v, int) for v in closed)
        try:
            closed = tuple(int(v) if numbers else v for v in settings.closed_statuses)
        except ValueError:
            raise ConfigError("ITSM_CLOSED_STATUSES must list this source's stored status "
                              f"values (numbers for {mapping.name}): fix its value.") from None
    return replace(mapping, closed_statuses=closed,
                   status_labels={**mapping.status_labels, **dict(settings.status_labels)},
                   priority_labels={**mapping.priority_labels,
                                    **dict(settings.priority_labels)})
