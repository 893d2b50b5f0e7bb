"""``tritonbn-check``: correctness of tritonbn and torch batch norm against the float64 reference."""
