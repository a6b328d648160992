"""A user-defined PyTorch CNN on Fashion-MNIST, Dirichlet-partitioned, evaluated on the devices."""
