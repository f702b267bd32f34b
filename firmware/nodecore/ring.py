"""A bounded buffer of outgoing messages, oldest first; when full, the oldest is dropped.

Entries stay until the relay acknowledges them, one by one (selective acks), so a message
lost in flight is sent again even when later ones got through. Sequence numbers in the
ring are consecutive (every message of a boot is pushed as it is made), so the entry of a
seq is found by subtraction.
"""

# sent_at_ms markers besides a real send time (>= 0)
UNSENT = -1
RESEND = -2  # was sent, the link went down before its ack: send again
ACKED = -3  # acked out of order; leaves once everything older has left


class Ring:
    __slots__ = ("_buf", "_head", "_len", "capacity", "dropped")

    def __init__(self, capacity):
        self.capacity = capacity
        # Each slot: [seq, message, sent_at_ms].
        self._buf = [None] * capacity
        self._head = 0
        self._len = 0
        self.dropped = 0

    def __len__(self):
        return self._len

    def push(self, seq, msg):
        if self._len == self.capacity:
            if self._buf[self._head][2] != ACKED:
                self.dropped += 1
            self._pop_head()
        self._buf[(self._head + self._len) % self.capacity] = [seq, msg, UNSENT]
        self._len += 1

    def _pop_head(self):
        self._buf[self._head] = None
        self._head = (self._head + 1) % self.capacity
        self._len -= 1

    def entry(self, i):
        """The i-th oldest entry, as a mutable [seq, message, sent_at_ms]."""
        return self._buf[(self._head + i) % self.capacity]

    def oldest(self):
        return self._buf[self._head] if self._len else None

    def ack(self, first, last):
        """Mark seqs first..last acked; drop acked entries from the head. Returns how many
        entries were newly acked."""
        if not self._len:
            return 0
        base = self._buf[self._head][0]
        lo = first - base
        if lo < 0:
            lo = 0
        hi = last - base
        if hi >= self._len:
            hi = self._len - 1
        n = 0
        for i in range(lo, hi + 1):
            entry = self.entry(i)
            if entry[2] != ACKED:
                entry[2] = ACKED
                n += 1
        while self._len and self._buf[self._head][2] == ACKED:
            self._pop_head()
        return n
