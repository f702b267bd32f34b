"""A bounded buffer of outgoing messages, oldest first; when full, the oldest is dropped.

Entries stay until the relay acknowledges them, one by one (selective acks), so a message
lost in flight is sent again even when later ones got through. Sequence numbers in the
ring strictly increase from head to tail, but they need not be consecutive: heartbeats take
a seq and are never buffered, so the ring has holes where they were. The entry of a seq is
found by subtraction when there is no hole before it (the common case), and otherwise by a
binary search between the head and that guess (an entry's index is never more than its seq
minus the head's seq).
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
        """Append a message; seq must be greater than every seq already in the ring."""
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

    def index(self, seq):
        """The index of the oldest entry whose seq is >= seq (len(self) if there is none)."""
        n = self._len
        if not n:
            return 0
        guess = seq - self._buf[self._head][0]
        if guess <= 0:
            return 0
        if guess < n and self.entry(guess)[0] == seq:
            return guess  # no hole before it
        # Seqs strictly increase, so the answer is at most guess: search [0, guess].
        lo = 0
        hi = guess if guess < n else n
        while lo < hi:
            mid = (lo + hi) // 2
            if self.entry(mid)[0] < seq:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def ack(self, first, last):
        """Mark the entries with seqs first..last acked (seqs not held are ignored); drop
        acked entries from the head. Returns how many entries were newly acked."""
        if not self._len or last < first:
            return 0
        n = 0
        i = self.index(first)
        while i < self._len:
            entry = self.entry(i)
            if entry[0] > last:
                break
            if entry[2] != ACKED:
                entry[2] = ACKED
                n += 1
            i += 1
        while self._len and self._buf[self._head][2] == ACKED:
            self._pop_head()
        return n
