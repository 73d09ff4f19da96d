"""trimesh: a service-mesh sidecar proxy on trio + h11."""

__version__ = "0.1.0"

__all__ = ["__version__"]
