"""`python -m mdtools`: the command line (mdtools.cli)."""

from .cli import main

raise SystemExit(main())
