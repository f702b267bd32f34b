"""A bounded buffer of outgoing messages, oldest first; when full, the oldest is dropped.

Entries stay until the relay acknowledges them, so a message in flight when the link
breaks is sent again after the reconnect (the relay de-duplicates).
"""


class Ring:
    __slots__ = ("_buf", "_head", "_len", "capacity", "dropped")

    def __init__(self, capacity):
        self.capacity = capacity
        # Each slot: [seq, message, sent_at_ms]; sent_at_ms is -1 while unsent.
        self._buf = [None] * capacity
        self._head = 0
        self._len = 0
        self.dropped = 0

    def __len__(self):
        return self._len

    def push(self, seq, msg):
        if self._len == self.capacity:
            self._head = (self._head + 1) % self.capacity
            self._len -= 1
            self.dropped += 1
        self._buf[(self._head + self._len) % self.capacity] = [seq, msg, -1]
        self._len += 1

    def entry(self, i):
        """The i-th oldest entry, as a mutable [seq, message, sent_at_ms]."""
        return self._buf[(self._head + i) % self.capacity]

    def oldest(self):
        return self._buf[self._head] if self._len else None

    def drop_through(self, seq):
        """Forget every entry with a sequence number up to and including seq."""
        n = 0
        while self._len and self._buf[self._head][0] <= seq:
            self._buf[self._head] = None
            self._head = (self._head + 1) % self.capacity
            self._len -= 1
            n += 1
        return n
