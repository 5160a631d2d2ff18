"""Diffusion math: noise schedules, losses and samplers; knows nothing about the network."""
