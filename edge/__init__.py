"""The edge device runtime, SDK and fleet simulator."""
