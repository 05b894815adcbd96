"""Entry point for `python -m cryptostats`."""

from cryptostats.main import main

if __name__ == "__main__":
    main()
