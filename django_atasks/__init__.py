"""Django integration of atasks (``pip install atasks[django]``): add ``"django_atasks"`` to
``INSTALLED_APPS`` for the ``manage.py run_atask`` command and ``settings.ATASKS``;
``django_atasks.setup()`` and ``django_atasks.on_commit()`` for the project's own processes."""

from django_atasks.calls import on_commit, setup
from django_atasks.middleware import CloseOldConnections

__all__ = ["CloseOldConnections", "on_commit", "setup"]
