"""Draw images/demo_checkpoint.svg, what the demo checkpoint learned.

The program is `llama3.tools.demo_figure` in the package (its docstring has the details); this file only starts it.
"""

from llama3.tools.demo_figure import main

if __name__ == "__main__":
    main()
