"""`python -m edgeproxy` is the same as the `edgeproxy` console script."""

from edgeproxy.cli import main

raise SystemExit(main())
