"""Moved to ``atasks.testing.rabbitnode`` (``python -m atasks.testing.rabbitnode`` runs a node);
kept so that ``from rabbitnode import RabbitNode`` goes on working in dev/."""

from atasks.testing.rabbitnode import RABBIT_BIN, Epmd, RabbitNode, main

__all__ = ["RABBIT_BIN", "Epmd", "RabbitNode", "main"]

if __name__ == "__main__":
    main()
