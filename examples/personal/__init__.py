"""Personal layers: the model's head is trained and kept on each device, only the body is federated."""
