"""The scheduler service: one independent process that talks to the others only through Kafka."""
