"""``python -m unbroken_server`` is the ``unbroken`` command."""
from .cli import main

raise SystemExit(main())
