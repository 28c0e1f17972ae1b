"""Channels beyond SMTP: email through a provider's HTTP API, and chat webhooks.

* ``http_email``: SendGrid, Amazon SES, Postmark and Mailgun as ``Transport``s for the
  same MIME messages the SMTP path sends (``make_http_email_transport``);
* ``chat``: Slack, Microsoft Teams (Workflows), Mattermost, Rocket.Chat and a signed
  JSON webhook (``ChatMessage``, ``ChatOutgoing``, ``ChatTransport``);
* ``messages``: the ``ChatMessage`` of an event's context (``chat_message``; None for
  an internal comment);
* ``routes``: the ``[chat.<name>]`` destinations of the config file and which of them an
  event goes to (``load_destinations``, ``destinations_for``);
* ``signing``: the webhook's HMAC-SHA256 signature, and its check for receivers;
* ``http``: what they share: a pooled HTTP client used by parallel workers, and the
  mapping of HTTP answers to the transports' outcomes (Retry-After included).
"""
