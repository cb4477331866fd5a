"""``python -m fleet.cli ...``: the ``fleet`` command without the console script."""

from fleet.cli import main

main()
