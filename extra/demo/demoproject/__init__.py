"""The Django project of sisy's demo (see ../README.md)."""
