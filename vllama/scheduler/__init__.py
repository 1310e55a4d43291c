"""Which engines run: leases, loads on demand, keep_alive, memory-aware placement, eviction
and sleep (DESIGN.md, "Many models")."""
