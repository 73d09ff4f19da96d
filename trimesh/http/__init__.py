"""The HTTP protocol layer: acceptance guard, header rules, targets, pool, tunnels."""
