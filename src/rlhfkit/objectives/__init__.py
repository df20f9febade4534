"""Pure math: tensors in, tensors out. No config objects, no I/O, no torch.distributed."""
