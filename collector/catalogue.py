"""The metric catalogue: every series name Outpost exports, with its help text.

docs/metrics.md is the reader's copy, with labels and meaning; a test keeps the two in step.
Agents may report names outside the catalogue (any MQTT client that keeps docs/protocol.md is
an agent); those are exported with a generic help text.
"""

from __future__ import annotations

__all__ = [
    "AGENT_SAMPLES",
    "ALERTING_FAMILIES",
    "CATALOGUE",
    "COLLECTOR_FAMILIES",
    "REMOTE_WRITE_FAMILIES",
]

# Series the collector derives from state (name -> Prometheus type).
COLLECTOR_FAMILIES: dict[str, str] = {
    "outpost_host_up": "gauge",
    "outpost_host_expected": "gauge",
    "outpost_host_state": "gauge",
    "outpost_host_last_seen_timestamp_seconds": "gauge",
    "outpost_host_info": "gauge",
    "outpost_host_clock_skew_seconds": "gauge",
    "outpost_host_events_total": "counter",
    "outpost_security_events_total": "counter",
    "outpost_agent_last_seq": "gauge",
    "outpost_agent_lost_messages_total": "counter",
    "outpost_agent_dropped_messages_total": "counter",
    "outpost_agent_duplicate_messages_total": "counter",
    "outpost_agent_rate_limited_messages_total": "counter",
    "outpost_host_samples_refused_total": "counter",
    "outpost_site_info": "gauge",
    "outpost_site_reachable": "gauge",
    "outpost_site_coverage": "gauge",
    "outpost_site_hosts": "gauge",
    "outpost_site_hosts_up": "gauge",
    "outpost_site_uplink_probes": "gauge",
    "outpost_site_uplink_probes_ok": "gauge",
    "outpost_site_uplink_latency_seconds": "gauge",
    "outpost_site_uplink_loss_ratio": "gauge",
    "outpost_site_outages_total": "counter",
    "outpost_site_outage_seconds_total": "counter",
    "outpost_collector_messages_total": "counter",
    "outpost_collector_invalid_messages_total": "counter",
    "outpost_collector_lost_messages_total": "counter",
    "outpost_collector_dropped_messages_total": "counter",
    "outpost_collector_acks_published_total": "counter",
    "outpost_collector_ack_failures_total": "counter",
    "outpost_collector_broker_connected": "gauge",
    "outpost_collector_broker_connects_total": "counter",
    "outpost_collector_hosts": "gauge",
    "outpost_collector_build_info": "gauge",
}

# Series of the late-sample forwarder (collector/remote_write.py), only when it is configured.
REMOTE_WRITE_FAMILIES: dict[str, str] = {
    "outpost_remote_write_samples_total": "counter",
    "outpost_remote_write_retries_total": "counter",
    "outpost_remote_write_queue_samples": "gauge",
}

# Series of the alert engine (collector/alerting/exporter.py).
ALERTING_FAMILIES: dict[str, str] = {
    "outpost_notifications_total": "counter",
    "outpost_alerts": "gauge",
    "outpost_alerts_firing": "gauge",
    "outpost_alert_evaluations_total": "counter",
    "outpost_alert_evaluation_failures_total": "counter",
    "outpost_alert_evaluation_duration_seconds": "gauge",
    "outpost_alert_events_dropped_total": "counter",
    "outpost_api_requests_refused_total": "counter",
}

_ALERTING_HELP = {
    "outpost_notifications_total": "Notification deliveries by notifier and result.",
    "outpost_alerts": "Alerts the collector keeps, by state and severity.",
    "outpost_alerts_firing": "Firing alerts by rule, site and severity.",
    "outpost_alert_evaluations_total": "Rule evaluations run.",
    "outpost_alert_evaluation_failures_total": "Rule evaluations that failed.",
    "outpost_alert_evaluation_duration_seconds": "How long the last rule evaluation took.",
    "outpost_alert_events_dropped_total": "Events not seen by the rules because the queue "
    "to them was full.",
    "outpost_api_requests_refused_total": "HTTP API requests refused for want of authority, "
    "by reason.",
}

_COLLECTOR_HELP = {
    "outpost_host_up": "1 when the host's agent is online and reporting, else 0.",
    "outpost_host_expected": "1 when sites.yaml lists the host, 0 for a host it does not list.",
    "outpost_host_state": "1 for the host's current state: online, lost, shutdown, stale or "
    "never_reported.",
    "outpost_host_last_seen_timestamp_seconds": "When the collector last heard from the host.",
    "outpost_host_info": "The host's agent id and boot id, as labels.",
    "outpost_host_clock_skew_seconds": "When the host's newest batch arrived minus when it "
    "says it was collected.",
    "outpost_host_events_total": "Events received from the host, by kind and severity.",
    "outpost_security_events_total": "Security events received from the host, by kind and "
    "severity.",
    "outpost_agent_last_seq": "The highest message seq settled for the host's agent.",
    "outpost_agent_lost_messages_total": "Messages of the host's agent that were never applied "
    "and that it no longer holds (should stay 0).",
    "outpost_agent_dropped_messages_total": "Messages the host's agent dropped on purpose when "
    "its outbox was full.",
    "outpost_agent_duplicate_messages_total": "Messages of the host's agent received again and "
    "ignored.",
    "outpost_agent_rate_limited_messages_total": "Messages of the host's agent past its rate "
    "limit: not applied, to be sent again.",
    "outpost_host_samples_refused_total": "Samples of applied batches the collector did not "
    "keep, by reason.",
    "outpost_site_info": "A site from sites.yaml with its names and coordinates, as labels.",
    "outpost_site_reachable": "1 when at least one of the site's agents is online.",
    "outpost_site_coverage": "1 for the site's coverage state: reachable, degraded, "
    "unreachable or unknown.",
    "outpost_site_hosts": "Hosts of the site the collector knows of (agents, devices, expected).",
    "outpost_site_hosts_up": "Hosts of the site that are up.",
    "outpost_site_uplink_probes": "Uplink probes the site's online agents report.",
    "outpost_site_uplink_probes_ok": "Of those, the ones that succeeded.",
    "outpost_site_uplink_latency_seconds": "Mean round-trip time of the site's uplink probes.",
    "outpost_site_uplink_loss_ratio": "Mean packet loss of the site's uplink probes.",
    "outpost_site_outages_total": "Outages the site's agents reported, by kind: power, agent, "
    "local_network, uplink, unknown.",
    "outpost_site_outage_seconds_total": "How long those outages lasted, by kind.",
    "outpost_collector_messages_total": "Messages ingested, by result.",
    "outpost_collector_invalid_messages_total": "Messages refused, by reason.",
    "outpost_collector_lost_messages_total": "Messages lost over the whole fleet (should stay 0).",
    "outpost_collector_dropped_messages_total": "Messages agents dropped on purpose, fleet-wide.",
    "outpost_collector_acks_published_total": "End-to-end acks published to agents.",
    "outpost_collector_ack_failures_total": "Acks that could not be handed to the broker.",
    "outpost_collector_broker_connected": "1 while the collector is connected to the broker.",
    "outpost_collector_broker_connects_total": "Successful connections to the broker.",
    "outpost_collector_hosts": "Hosts the collector knows of (reported or expected).",
    "outpost_collector_build_info": "The collector's version, as a label.",
    "outpost_remote_write_samples_total": "Late samples for the remote-write endpoint, by "
    "result (sent, failed, dropped).",
    "outpost_remote_write_retries_total": "Remote-write requests sent again after a "
    "connection error, 429 or 5xx.",
    "outpost_remote_write_queue_samples": "Late samples waiting to be sent to the remote-write "
    "endpoint.",
}

# Series agents report (the agent's system source and its own health).
AGENT_SAMPLES: dict[str, str] = {
    "outpost_host_boot_time_seconds": "When the host booted, as a Unix time.",
    "outpost_host_uptime_seconds": "Seconds since the host booted.",
    "outpost_cpu_seconds_total": "CPU time spent in each mode, all CPUs together.",
    "outpost_cpu_count": "Logical CPUs.",
    "outpost_load1": "Load average over 1 minute.",
    "outpost_load5": "Load average over 5 minutes.",
    "outpost_load15": "Load average over 15 minutes.",
    "outpost_memory_total_bytes": "Physical memory.",
    "outpost_memory_available_bytes": "Memory available to new work without swapping.",
    "outpost_memory_used_bytes": "Memory in use.",
    "outpost_swap_total_bytes": "Swap space.",
    "outpost_swap_used_bytes": "Swap in use.",
    "outpost_filesystem_size_bytes": "File system size, per real mount.",
    "outpost_filesystem_free_bytes": "Free space including the root reserve.",
    "outpost_filesystem_avail_bytes": "Space available to unprivileged users.",
    "outpost_disk_read_bytes_total": "Bytes read, per disk.",
    "outpost_disk_written_bytes_total": "Bytes written, per disk.",
    "outpost_disk_reads_completed_total": "Reads completed, per disk.",
    "outpost_disk_writes_completed_total": "Writes completed, per disk.",
    "outpost_disk_io_time_seconds_total": "Seconds the disk was busy.",
    "outpost_network_receive_bytes_total": "Bytes received, per interface.",
    "outpost_network_transmit_bytes_total": "Bytes sent, per interface.",
    "outpost_network_receive_packets_total": "Packets received, per interface.",
    "outpost_network_transmit_packets_total": "Packets sent, per interface.",
    "outpost_network_receive_errors_total": "Receive errors, per interface.",
    "outpost_network_transmit_errors_total": "Transmit errors, per interface.",
    "outpost_network_receive_drop_total": "Received packets dropped, per interface.",
    "outpost_network_transmit_drop_total": "Outgoing packets dropped, per interface.",
    "outpost_network_up": "1 when the interface is operationally up.",
    "outpost_network_speed_bytes": "Link speed in bytes per second.",
    "outpost_network_admin_up": "1 when the interface is administratively up (SNMP gear).",
    "outpost_snmp_info": "The SNMP device's sysName, as a label.",
    "outpost_snmp_duration_seconds": "How long the last SNMP poll of the device took.",
    "outpost_device_up": "1 when the SNMP device answered its agent's last poll.",
    "outpost_processes": "Processes on the host.",
    "outpost_battery_percent": "Battery or UPS charge.",
    "outpost_battery_power_plugged": "1 on mains power, 0 on battery.",
    "outpost_battery_seconds_left": "Estimated battery time left.",
    "outpost_temperature_celsius": "Temperature per sensor.",
    "outpost_probe_success": "1 when the probe of the target succeeded in the last cycle.",
    "outpost_probe_duration_seconds": "How long the whole probe of the target took.",
    "outpost_probe_rtt_min_seconds": "Shortest ICMP echo round trip to the target.",
    "outpost_probe_rtt_avg_seconds": "Mean ICMP echo round trip to the target (TCP: the "
    "connect time).",
    "outpost_probe_rtt_max_seconds": "Longest ICMP echo round trip to the target.",
    "outpost_probe_jitter_seconds": "Mean difference between consecutive ICMP round trips.",
    "outpost_probe_loss_ratio": "Share of ICMP echo requests without a reply (TCP: 0 or 1).",
    "outpost_probe_http_status_code": "HTTP status code the target answered with.",
    "outpost_probe_http_ttfb_seconds": "Time from the start of the HTTP probe to the first "
    "byte of the response.",
    "outpost_probe_tls_cert_days_left": "Days until the target's verified TLS certificate expires.",
    "outpost_probe_dns_answers": "Answers of the asked type in the DNS reply.",
    "outpost_probes_targets": "Probe targets configured on the agent.",
    "outpost_probes_failed": "Probe targets that failed in the last cycle.",
    "outpost_security_auth_failures_total": "Failed logins the agent read from the auth log.",
    "outpost_security_check_success": "1 when the security check succeeded when it last ran.",
    "outpost_agent_source_success": "1 when the source read successfully in the last cycle.",
    "outpost_agent_source_duration_seconds": "How long the source took in the last cycle.",
    "outpost_agent_outbox_rows": "Messages waiting in the agent's outbox.",
    "outpost_agent_outbox_bytes": "Bytes waiting in the agent's outbox.",
    "outpost_agent_outbox_dropped_total": "Messages the agent dropped because its outbox was full.",
    "outpost_agent_outbox_dropped_events_total": "Events among them (dropped only when no "
    "metrics were left to drop).",
    "outpost_agent_publish_failures_total": "Publishes the agent could not hand to the broker.",
    "outpost_agent_collection_duration_seconds": "How long the last collection cycle took.",
    "outpost_agent_outbox_full": "1 while the disk holding the agent's outbox is full.",
    "outpost_agent_outbox_full_episodes_total": "Disk-full episodes of the agent's outbox.",
    "outpost_agent_outbox_write_failures_total": "Cycles the agent could not store at all.",
    "outpost_agent_unclean_restarts_total": "Agent starts after a stop that was not asked for.",
    "outpost_agent_missed_cycles_total": "Collection cycles the agent missed through those stops.",
}

CATALOGUE: dict[str, str] = {**_COLLECTOR_HELP, **_ALERTING_HELP, **AGENT_SAMPLES}
