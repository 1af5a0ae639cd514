from collections import defaultdict


class OutOfStock(Exception):
    pass


class Inventory:
    """Stock levels per item, with reservations that expire when an order is cancelled."""

    def __init__(self):
        self.stock = defaultdict(int)
        self.reserved = defaultdict(int)

    def add(self, item, quantity):
        if quantity <= 0:
            raise ValueError("quantity must be positive")
        self.stock[item] += quantity

    def available(self, item):
        return self.stock[item] - self.reserved[item]

    def reserve(self, item, quantity):
        if self.available(item) < quantity:
            raise OutOfStock(item)
        self.reserved[item] += quantity

    def release(self, item, quantity):
        self.reserved[item] -= quantity

    def ship(self, item, quantity):
        self.reserved[item] -= quantity
        self.stock[item] -= quantity

    def report(self):
        rows = []
        for item in sorted(self.stock):
            rows.append(f"{item:<20} {self.stock[item]:>6} {self.reserved[item]:>6}")
        return "\n".join(rows)


def restock_list(inventory, minimum):
    """Items whose available quantity fell below `minimum`."""
    return [item for item in inventory.stock if inventory.available(item) < minimum]
