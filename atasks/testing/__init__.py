"""Helpers for testing code that uses atasks: a private RabbitMQ node (``rabbitnode``) and a
pytest plugin (``atasks.pytest_plugin``) whose fixtures use it."""
