"""``contract``: the tables the outside contract describes (users, projects,
project_members, tickets, comments), as ``db init`` creates them for demos and tests."""

from __future__ import annotations

from typing import Any

MAPPING: dict[str, Any] = {
    "user": {"from": "users", "id": "id", "username": "username", "email": "email",
             "first_name": "first_name", "last_name": "last_name", "is_active": "is_active",
             "is_manager": "is_manager", "locale": "locale"},
    "ticket": {"from": "tickets", "id": "id", "number": "number", "title": "title",
               "description": "description", "status": "status", "priority": "priority",
               "requester_id": "requester_id", "assignee_id": "assignee_id",
               "team_id": "project_id", "due_at": "due_at", "created_at": "created_at"},
    "comment": {"from": "comments", "id": "id", "ticket_id": "ticket_id",
                "author_id": "author_id", "body": "body", "is_internal": "is_internal",
                "created_at": "created_at"},
    "team": {"from": "projects", "id": "id", "name": "name", "notify_team": "notify_team"},
    "membership": {"from": "project_members", "team_id": "project_id", "user_id": "user_id"},
    "closed_statuses": ["resolved", "closed"],
}
