"""Test-wide settings: estimator kernels run eager unless a test asks for torch.compile
(compiling costs ~40 s cold; tests/quantize/test_estimators.py checks the compiled path once)."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")
