"""The Outpost collector: MQTT ingest -> fleet state -> /metrics and the HTTP API."""
