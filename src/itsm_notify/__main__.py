"""``python -m itsm_notify``: the same command line as ``itsm-notify``."""

from itsm_notify.entry import main

main()
