"""Run the gradient_flow example.

    python examples/gradient_flow.py [--quick] [--out DIR]

Same as `rnnkern demo gradient_flow`; the implementation is
rnnkern/examples/gradient_flow.py, inside the package, so that the demo also
runs from an installed rnnkern.
"""

import sys

from rnnkern.examples.gradient_flow import main

if __name__ == "__main__":
    main(sys.argv[1:])
