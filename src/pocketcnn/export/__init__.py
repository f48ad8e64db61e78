"""Export writers (ONNX, ``.pt2``, ExecuTorch ``.pte``, ...) and the verification of what they write.

Import the submodules: ``exporter.export_model`` is the entry point, ``formats`` the
torch-free list of formats.
"""
