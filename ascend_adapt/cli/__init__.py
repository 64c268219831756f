"""Command-line interface. See `main.py`: commands load lazily from `cli/cmd_*.py`."""
