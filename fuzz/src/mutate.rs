//! A seeded mutator for the stable driver: the edits coverage-guided fuzzers start from (bit
//! flips, interesting values, inserted, deleted, repeated and spliced ranges, truncation), with
//! no coverage feedback. Deterministic for a seed, so a failure reproduces from its round number.

/// xorshift64*: enough randomness for mutations, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Values that sit on the edges of lengths, counts and sizes.
const INTERESTING: [&[u8]; 8] = [
    &[0x00],
    &[0xff],
    &[0x7f],
    &[0x80],
    &[0xff, 0xff, 0xff, 0xff],
    &[0x00, 0x00, 0x00, 0x80],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
    &[0x5b, 0x5b, 0x5b, 0x5b],
];

/// `input` with 1–4 random edits; `other` is another corpus entry to splice from.
pub fn mutate(input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(8) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next_u64() as u8;
            }
            2 => {
                let value = INTERESTING[rng.below(INTERESTING.len())];
                let i = rng.below(out.len() + 1);
                let end = (i + value.len()).min(out.len());
                out.splice(i..end, value.iter().copied());
            }
            3 if !out.is_empty() => {
                let i = rng.below(out.len());
                let n = 1 + rng.below((out.len() - i).min(64));
                out.drain(i..i + n);
            }
            4 if !out.is_empty() => {
                // Repeat a range: nesting, and counts that grow.
                let i = rng.below(out.len());
                let n = 1 + rng.below((out.len() - i).min(32));
                let range: Vec<u8> = out[i..i + n].to_vec();
                for _ in 0..1 + rng.below(16) {
                    out.splice(i..i, range.iter().copied());
                }
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let n = 1 + rng.below((other.len() - from).min(256));
                let at = rng.below(out.len() + 1);
                out.splice(at..at, other[from..from + n].iter().copied());
            }
            6 if !out.is_empty() => out.truncate(rng.below(out.len())),
            _ => {
                let at = rng.below(out.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                out.splice(at..at, bytes);
            }
        }
    }
    out
}
