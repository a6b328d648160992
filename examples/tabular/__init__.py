"""Softmax regression in plain numpy on scikit-learn's digits: nothing in this example needs torch."""
