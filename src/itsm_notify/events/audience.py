"""Who is told: recipients and the rules every event shares (actor, de-duplication,
opt-outs), as pure functions of an event's context."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..config import Settings
from ..states import Channel
from .model import EventContext, User


@dataclass(frozen=True)
class EmailRecipient:
    address: str
    name: str
    first_name: str = ""
    user_id: int | None = None
    locale: str | None = None
    """The reader's locale as the source has it (``de``, ``pt_BR``); None: the default."""
    time_zone: str | None = None
    """The reader's IANA time zone; None: ITSM_TIME_ZONE."""
    is_staff: bool = False
    """Whether the source says the reader is staff (django-helpdesk's ``is_staff``):
    only staff may be emailed an internal comment, and only where the source's rules
    say so (django-helpdesk tells a ticket's owner of a private follow-up)."""

    @property
    def key(self) -> str:
        """The de-duplication key: addresses compare case-insensitively."""
        return self.address.strip().lower()


def locale_of(ctx: EventContext, user: User | None) -> str | None:
    """A reader's locale: the user's own, else their ticket's team's (a django-helpdesk
    queue writes to everyone in its language), else None (ITSM_DEFAULT_LOCALE)."""
    if user is not None and user.locale:
        return user.locale
    return ctx.project.locale if ctx.project is not None else None


@dataclass(frozen=True)
class Recipients:
    email: tuple[EmailRecipient, ...] = ()
    in_app: tuple[int, ...] = ()


class Audience:
    """Collects recipients in a stable order, applying the rules every event shares:
    the actor is not told of their own action (unless configured), one email per
    address and one in-app row per user, inactive users and users without an address
    get no email, and a user's opt-out for this event type is honoured."""

    def __init__(self, ctx: EventContext, settings: Settings) -> None:
        self.ctx = ctx
        self.settings = settings
        actor = ctx.actor
        self.actor_id = None if settings.notify_actor else ctx.event.actor_id
        if settings.notify_actor:
            self.actor_email = ""
        elif actor is not None:
            self.actor_email = (actor.email or "").strip().lower()
        else:  # an actor without an account, named by address (``actor_email``)
            self.actor_email = ctx.payload.get("actor_email", "")
        self.email: dict[str, EmailRecipient] = {}
        self.in_app: dict[int, None] = {}

    def user(self, user_id: int | None, *, email: bool = True, in_app: bool = True) -> None:
        """A user of the help desk, by id (an id not loaded, or None, is nobody)."""
        user = self.ctx.users.get(user_id) if user_id is not None else None
        if user is not None:
            self.person(user, email=email, in_app=in_app)

    def person(self, user: User, *, email: bool = True, in_app: bool = True) -> None:
        if user.id == self.actor_id or not user.is_active:
            return
        if in_app and (user.id, Channel.IN_APP) not in self.ctx.opted_out:
            self.in_app.setdefault(user.id, None)
        if email and user.email and (user.id, Channel.EMAIL) not in self.ctx.opted_out:
            self._add_email(EmailRecipient(address=user.email.strip(), name=user.display_name,
                                           first_name=user.first_name, user_id=user.id,
                                           locale=locale_of(self.ctx, user),
                                           time_zone=user.time_zone,
                                           is_staff=bool(user.extra.get("is_staff"))))

    def users(self, user_ids: Iterable[int | None], **channels: bool) -> None:
        for user_id in user_ids:
            self.user(user_id, **channels)

    def address(self, address: str, name: str = "", *, in_app: bool = True) -> None:
        """Someone known by address (a submitter, a CC): the active account with that
        address when there is one (its name, its preferences, in-app too unless
        ``in_app`` is False), else the address alone, email only."""
        account = self.ctx.accounts.get(address.strip().lower())
        if account is not None:
            self.person(account, in_app=in_app)
        else:
            self._add_email(EmailRecipient(address=address.strip(), name=name,
                                           locale=locale_of(self.ctx, None)))

    def requester(self) -> None:
        """The ticket's requester: the user, or the address an app stores instead
        (django-helpdesk's ``submitter_email``)."""
        ticket = self.ctx.ticket
        if ticket.requester_id is not None:
            self.user(ticket.requester_id)
        elif ticket.requester_email:
            self.address(ticket.requester_email)

    def team_ccs(self, *, on_create: bool = False) -> None:
        """The addresses the ticket's team copies on every change, and, for a new
        ticket, on every new one."""
        project = self.ctx.project
        if project is not None:
            for address in (*project.cc_on_create, *project.cc_on_update) if on_create \
                    else project.cc_on_update:
                self.address(address)

    def ticket_ccs(self, *, staff_only: bool = False) -> None:
        """The ticket's own CCs, when its team says they are told; ``staff_only``: only
        CCs whose account is staff (``is_staff`` in the user's fields)."""
        if self.ctx.project is None or not self.ctx.project.notify_ticket_ccs:
            return
        for cc in self.ctx.ccs:
            user = self.ctx.users.get(cc.user_id) if cc.user_id is not None else None
            if user is not None:
                if not staff_only or user.extra.get("is_staff"):
                    self.person(user)
            elif cc.email and not staff_only:
                self.address(cc.email)

    def admins(self) -> None:
        """ADMINS by email; an admin address that belongs to an active user account is
        that user (email and in-app, their name, their preferences)."""
        for admin in self.settings.admins:
            account = self.ctx.admin_accounts.get(admin.email.lower())
            if account is not None:
                self.person(account)
            else:
                self._add_email(EmailRecipient(address=admin.email, name=admin.name))

    def _add_email(self, recipient: EmailRecipient) -> None:
        if recipient.key and recipient.key != self.actor_email:
            self.email.setdefault(recipient.key, recipient)

    def result(self) -> Recipients:
        return Recipients(email=tuple(self.email.values()), in_app=tuple(self.in_app))
