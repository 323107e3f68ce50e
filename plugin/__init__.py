"""Connectors to the outside world: capture files, Zeek, Suricata."""
