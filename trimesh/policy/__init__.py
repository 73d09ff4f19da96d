"""Policies: sans-IO decisions (routing, balancing, retries, hedging, breakers, limits, faults)."""
