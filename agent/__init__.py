"""The daemon core: config, store, reassembly, hub client, admin HTTP, CLI. Hardware-independent."""

__version__ = "1.0.0"
