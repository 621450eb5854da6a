"""The demo's app: its sisy modules live in sisy_modules.py, found by sisy at start-up."""
