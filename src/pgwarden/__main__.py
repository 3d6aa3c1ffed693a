"""Allow `python -m pgwarden`."""

from pgwarden.cli.main import main

raise SystemExit(main())
