"""Fused ops. Each module holds one op: its Triton kernels, host function, the custom operators of its Triton and
PyTorch backends (fake kernels and autograd registered, the C++ operator's fake kernel too), and its public
function (argument checks, backend choice; traced by torch.compile, never reads a tensor value)."""
