"""The Django application of atasks."""

from django.apps import AppConfig


class ATasksConfig(AppConfig):
    """Provides the ``run_atask`` management command."""

    name = "django_atasks"
    verbose_name = "atasks"
