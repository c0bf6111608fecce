"""Schedules: ``@schedule(interval= | at= | crontab=)`` runs an atask at fixed times, fired
exactly once per due time by whichever server of the namespace holds the scheduler role.

``crontab`` (the specification), ``timing`` (pure due-time arithmetic), ``schedule`` (the
decorator and registry), ``scheduler`` (the loop of the server holding the role).
"""

from atasks.schedules.crontab import Crontab, Month, Weekday
from atasks.schedules.schedule import Schedule, get_schedule, schedule, schedules

__all__ = ["Crontab", "Month", "Schedule", "Weekday", "get_schedule", "schedule", "schedules"]
