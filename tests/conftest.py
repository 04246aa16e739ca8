"""Shared test settings.

One CPU thread: results are then bit-identical from run to run on a machine (summation order does
not depend on the thread pool), and small networks run faster than with contended threads.
"""
import torch

torch.set_num_threads(1)
