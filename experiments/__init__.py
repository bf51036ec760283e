"""Experiment scripts: sweeps of Flower simulations that write the paper's tables and figure."""
