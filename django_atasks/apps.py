"""The Django application of atasks."""

from django.apps import AppConfig
from django.conf import settings


class ATasksConfig(AppConfig):
    """Provides the ``run_atask`` management command, and applies ``settings.ATASKS``."""

    name = "django_atasks"
    verbose_name = "atasks"

    def ready(self) -> None:
        from django_atasks.conf import apply

        apply(getattr(settings, "ATASKS", {}))
