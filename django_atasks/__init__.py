"""Django integration of atasks: add ``"django_atasks"`` to ``INSTALLED_APPS`` for the
``manage.py run_atask`` command (install with ``pip install atasks[django]``)."""
