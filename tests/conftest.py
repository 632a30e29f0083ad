import sys
from pathlib import Path

import torch

# The broken implementations live beside the tests and are imported as the package ``broken``.
sys.path.insert(0, str(Path(__file__).parent))

# pytest-xdist runs one worker per core; intra-op threads on top of that only contend.
torch.set_num_threads(1)
