"""``qflare simulate``: many device runtimes on one machine, for scale and fault tests."""
