"""The daemon core: config, store, reassembly, hub client, admin HTTP, CLI. Hardware-independent."""
