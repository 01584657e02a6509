"""Cron schedules for `training.schedule`: the parser lives in `fusionrec.cron` (the spec validates with it);
the operator computes next-run times with the same `CronSchedule`."""

from fusionrec.cron import CronSchedule, retrain_version

__all__ = ["CronSchedule", "retrain_version"]
