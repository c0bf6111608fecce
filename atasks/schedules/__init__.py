"""Schedules: ``@schedule(interval= | at= | crontab= | cron=)`` runs an atask at fixed times, fired
exactly once per due time by whichever server of the namespace holds the scheduler role.

``crontab`` (the specification), ``timing`` (pure due-time arithmetic), ``decorator`` (the
decorator, the ``Schedule`` it registers and the lookups), ``scheduler`` (the loop of every
serving router, firing while it holds the role).
"""

from atasks.schedules.crontab import Crontab, Month, Weekday
from atasks.schedules.decorator import Schedule, get_schedule, registered, schedule

__all__ = ["Crontab", "Month", "Schedule", "Weekday", "get_schedule", "registered", "schedule"]
