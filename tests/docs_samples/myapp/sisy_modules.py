import math

from sisy.modules import Module, register


@register("greet")
class Greet(Module):
    schema = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1}},
        "additionalProperties": False,
    }

    def run(self):
        self.progress(0.5, "composing")
        return {"greeting": f"Hello, {self.data['name']}!"}


@register("count_primes")
class CountPrimes(Module):
    """Counts the prime numbers below a limit, with the sieve of Eratosthenes."""

    schema = {
        "type": "object",
        "required": ["limit"],
        "properties": {
            "limit": {"type": "integer", "minimum": 2, "maximum": 100_000_000},
        },
        "additionalProperties": False,
    }

    def run(self):
        limit = self.data["limit"]
        is_prime = bytearray([1]) * limit  # is_prime[n] for 0 <= n < limit
        is_prime[:2] = b"\x00\x00"
        root = math.isqrt(limit - 1)
        for n in range(2, root + 1):
            if is_prime[n]:
                is_prime[n * n :: n] = bytes(len(range(n * n, limit, n)))
            if n % 500 == 0:
                self.progress(n / root, f"crossed out the multiples of {n}")
        count = is_prime.count(1)
        largest = is_prime.rindex(1) if count else None
        return {"limit": limit, "count": count, "largest": largest}
