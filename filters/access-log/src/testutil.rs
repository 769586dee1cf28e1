//! Helpers for the unit tests.

/// Deterministic pseudo-random numbers and bytes (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Up to `max` bytes, one in three taken from the bytes that break
    /// naive log writers (CR, LF, NUL, quotes, invalid UTF-8 lead bytes).
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % (max + 1);
        const SPICY: &[u8] = b"\r\n\0\"\\\t\x7f\x1b\xff\xfe\xc3\xe2\x80\xa8{}";
        (0..n)
            .map(|_| {
                let r = self.next();
                if r.is_multiple_of(3) {
                    SPICY[(r as usize / 3) % SPICY.len()]
                } else {
                    (r >> 8) as u8
                }
            })
            .collect()
    }
}
