"""When to notify: business hours, due-soon thresholds and per-user delivery windows.

Pure time arithmetic with no clock of its own: every function is given ``now``. At the
interfaces a naive ``datetime`` is UTC (as the tool's database stores timestamps) and an
aware one may be in any zone.
"""
