"""`python -m cli …` runs the `llmq` command."""

from cli.main import main

main()
