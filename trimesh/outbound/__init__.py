"""Outbound (consumer) side: service name in the target -> an instance of that service."""
