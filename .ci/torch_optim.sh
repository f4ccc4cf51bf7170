#!/usr/bin/env bash
# tests/test_torch_optim.py enumerates torch's own optimizer test inputs
# (torch.testing._internal.common_optimizers), whose import needs expecttest;
# without it those tests skip with their reason.
set -euo pipefail
python -m pip install -q expecttest
python -c "import torch.testing._internal.common_optimizers" \
  || { echo "ci: torch's optimizer test inputs do not import"; exit 1; }
