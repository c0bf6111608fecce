"""``python -m atasks`` is the ``atasks`` command."""

from atasks.cli import main

main()
