"""Measure rounding at 8B's shape against logits_tolerance (make tolerance-8b).

The program is `llama3.tools.tolerance_trials` in the package (its docstring has the details); this file only starts it.
"""

from llama3.tools.tolerance_trials import main

if __name__ == "__main__":
    main()
