"""``mb``: the command-line client of magickbox nodes (HTTP only; imports nothing of the node)."""
