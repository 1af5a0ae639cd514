"""Measuring and training: the decoding benchmark, its workloads, and the MTP head's training."""
