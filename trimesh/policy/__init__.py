"""Policies: sans-IO decisions (balancing today; retries, breakers, limits to come)."""
