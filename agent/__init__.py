"""The Outpost agent: sources -> cycle -> outbox (SQLite) -> publisher (MQTT)."""
