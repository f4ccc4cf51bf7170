"""Print the 8-bit dynamic code tables of csrc/optcore/quantize.h.

The values are defined once, in tests/reference/low_precision.py (dynamic_code);
tests/optim/test_quantize.py checks that the header's tables equal them.
Run from the repository root: python tools/gen_q8_code.py > /tmp/tables.inc
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.reference.low_precision import dynamic_code, midpoints  # noqa: E402


def literals(values) -> str:
    items = [float(np.float32(v)).hex() + "f" for v in values]
    assert all(np.float32(v) == v for v in values), "not exact in float32"
    lines = []
    for i in range(0, len(items), 4):
        lines.append("    " + ", ".join(items[i:i + 4]) + ",")
    return "\n".join(lines)


def main() -> None:
    for signed, name in ((True, "SIGNED"), (False, "UNSIGNED")):
        code = dynamic_code(signed)
        print(f"#define OPTCORE_Q8_{name}_CODE \\")
        print(" \\\n".join(literals(code).splitlines()))
        print()
        print(f"#define OPTCORE_Q8_{name}_MIDPOINTS \\")
        print(" \\\n".join(literals(midpoints(code)).splitlines()))
        print()


if __name__ == "__main__":
    main()
