"""``python -m atasks`` is the ``atasks`` command."""

from atasks.cli import main

if __name__ == "__main__":  # imported, it runs nothing
    main()
