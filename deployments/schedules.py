"""When the scheduled deployments run, unless told otherwise (cron, in the service's time zone)."""

INBOX_CRON = "*/5 * * * *"  # bulk-generate reads the inbox every five minutes
NIGHTLY_CRON = "0 3 * * *"  # rebuild-index runs at three every night
