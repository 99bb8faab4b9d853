"""The browser test runs only from `make test-ui` (it sets LLAMA3_TEST_UI=1), never in `make test`."""

import os

collect_ignore_glob = [] if os.environ.get("LLAMA3_TEST_UI") == "1" else ["test_*.py"]
