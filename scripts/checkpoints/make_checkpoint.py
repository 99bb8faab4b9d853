"""Write a random checkpoint at any shape (Meta's layout, its shards or Hugging Face's), or an existing one in another layout.

The program is `llama3.tools.synthetic` in the package (its docstring has the details); this file only starts it.
"""

from llama3.tools.synthetic import main

if __name__ == "__main__":
    main()
