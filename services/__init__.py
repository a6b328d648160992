"""Independent QFLARE services. Each talks to the others only through Kafka topics."""
