import sys
from pathlib import Path

# The broken implementations live beside the tests and are imported as the package ``broken``.
sys.path.insert(0, str(Path(__file__).parent))
