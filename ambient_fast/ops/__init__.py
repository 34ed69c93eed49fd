"""Fused ops. Each module holds one op: its Triton kernels, host function, autograd Function, functional form
and nn.Module wrapper."""
