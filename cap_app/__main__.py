"""`python -m cap_app ...`: the command line (see cap_app.cli)."""

from cap_app.cli import main

raise SystemExit(main())
