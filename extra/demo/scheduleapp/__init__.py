"""The demo's scheduled Tasks: task functions of every kind, created by data migrations."""
