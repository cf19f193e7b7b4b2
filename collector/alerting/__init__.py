"""The collector's alerting: rules, engine, routing, schedules, notifiers."""
