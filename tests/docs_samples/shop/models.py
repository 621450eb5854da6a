# shop/models.py
from django.db import models


class Customer(models.Model):
    email = models.EmailField(unique=True)

    def __str__(self):
        return self.email

    @classmethod
    def nightly(cls, message):
        return {"customers": cls.objects.count()}

    @staticmethod
    def cleanup(message):
        return None

    def send_statement(self, message):
        return {"sent_to": self.email}
