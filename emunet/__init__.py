"""emunet: a Kubernetes pod-network fabric emulator (sans-I/O core)."""

__version__ = "0.1.0"
