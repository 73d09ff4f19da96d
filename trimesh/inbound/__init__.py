"""Inbound (provider) side: requests from other sidecars -> the local app."""
