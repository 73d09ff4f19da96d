"""Service registries: one protocol, several backends."""

from trimesh.discovery.base import (
    Instance,
    LeaseExpired,
    Registration,
    Registry,
    RegistryError,
    RegistryUnavailable,
    ServiceKey,
)

__all__ = [
    "Instance",
    "LeaseExpired",
    "Registration",
    "Registry",
    "RegistryError",
    "RegistryUnavailable",
    "ServiceKey",
]
