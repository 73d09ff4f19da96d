"""Configuration: frozen attrs models and the YAML + env + CLI loader."""

from trimesh.config.load import ConfigError, build, load, registry_url
from trimesh.config.model import (
    AppConfig,
    Config,
    HealthConfig,
    Limits,
    ListenConfig,
    ObserveConfig,
    RegistryConfig,
    ServiceConfig,
    StaticInstance,
    UpstreamConfig,
)

__all__ = [
    "AppConfig",
    "Config",
    "ConfigError",
    "HealthConfig",
    "Limits",
    "ListenConfig",
    "ObserveConfig",
    "RegistryConfig",
    "ServiceConfig",
    "StaticInstance",
    "UpstreamConfig",
    "build",
    "load",
    "registry_url",
]
