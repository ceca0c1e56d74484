"""The demo's data: a sales table big enough for a report to take a while."""

from django.db import models


class Sale(models.Model):
    """One sale; ``manage.py seed_demo`` fills the table with generated rows."""

    region = models.CharField(max_length=32)
    product = models.CharField(max_length=64)
    sold_on = models.DateField()
    quantity = models.IntegerField()
    amount = models.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        verbose_name = "sale"
        verbose_name_plural = "sales"

    def __str__(self) -> str:
        return f"{self.sold_on} {self.region} {self.product} x{self.quantity}"
