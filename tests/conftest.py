"""Tests share 2 cores with the robot processes they start: one torch thread each."""

import torch

torch.set_num_threads(1)
