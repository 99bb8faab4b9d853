"""Execute every notebook in a fresh kernel and print the next tokens (make run).

The program is `llama3.tools.run_notebooks` in the package (its docstring has the details); this file only starts it.
"""

from llama3.tools.run_notebooks import main

if __name__ == "__main__":
    main()
