//! Random test inputs that replay: a 64-bit linear congruential generator, the same sequence
//! from the same seed on every machine, so a failing input can be rebuilt from its seed.

/// Knuth's MMIX constants; the high bits are the well-spread ones.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next whole state (its low bits cycle quickly: shift before using them).
    pub fn raw(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }

    /// The next 31 well-spread bits.
    pub fn bits(&mut self) -> u64 {
        self.raw() >> 33
    }

    /// The next number below `m` (m > 0).
    pub fn below(&mut self, m: u64) -> u64 {
        self.bits() % m
    }
}
