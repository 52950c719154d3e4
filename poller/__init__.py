"""Energy Monitoring Management poller: Modbus TCP meters -> InfluxDB, on a cron schedule."""
