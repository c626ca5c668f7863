//! Few-shot example sampling exactly as lm-eval 0.4 draws it: one CPython `random.Random(1234)`
//! per task, one `random.sample` call per document in document order, so the same examples come
//! out as in an lm-eval run (MT19937 with `init_by_array`, `getrandbits`, `_randbelow`, and
//! `sample`'s two strategies, after CPython 3.11's `Modules/_randommodule.c` and `Lib/random.py`).

/// lm-eval's default `fewshot_random_seed`.
pub const FEWSHOT_SEED: u32 = 1234;

const N: usize = 624;
const M: usize = 397;

/// CPython's `random.Random`: the Mersenne Twister MT19937.
pub struct PyRandom {
    state: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative seed below 2^32 (`init_by_array([seed])`).
    pub fn new(seed: u32) -> Self {
        let mut rng = Self::init_genrand(19_650_218);
        let key = [seed];
        let mt = &mut rng.state;
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        rng
    }

    fn init_genrand(seed: u32) -> Self {
        let mut state = [0u32; N];
        state[0] = seed;
        for i in 1..N {
            state[i] = 1_812_433_253u32
                .wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: N }
    }

    /// The next 32 random bits (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        for k in 0..N {
            let y = (self.state[k] & UPPER) | (self.state[(k + 1) % N] & LOWER);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.state[k] = self.state[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// `getrandbits(bits)` for 1 ≤ bits ≤ 32.
    fn getrandbits(&mut self, bits: u32) -> u32 {
        self.next_u32() >> (32 - bits)
    }

    /// `_randbelow(n)`: uniform in `0..n` by rejection on `n`'s bit length.
    pub fn randbelow(&mut self, n: usize) -> usize {
        assert!(n > 0 && n <= u32::MAX as usize, "randbelow({n})");
        let bits = usize::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(bits) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// `random.sample(range(n), k)`: `k` distinct indices below `n`, in draw order.
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample larger than population");
        let mut setsize = 21usize;
        if k > 5 {
            let exponent = ((3 * k) as f64).ln() / 4f64.ln();
            setsize += 4usize.pow(exponent.ceil() as u32);
        }
        let mut out = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow(n - i);
                out.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::new();
            for _ in 0..k {
                let mut j = self.randbelow(n);
                while selected.contains(&j) {
                    j = self.randbelow(n);
                }
                selected.insert(j);
                out.push(j);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::PyRandom;

    /// Values printed by CPython 3.11:
    /// `r = random.Random(1234); [r.getrandbits(32) for _ in range(3)]`, then on fresh generators
    /// `r.sample(range(1000), 4), r.sample(range(10), 4)` and `r.sample(range(40), 7), r.sample(range(100000), 7)`.
    #[test]
    fn draws_what_cpython_draws() {
        let mut r = PyRandom::new(1234);
        let first: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(first, [4150886329, 3342196574, 1892932127]);
        let mut r = PyRandom::new(1234);
        assert_eq!(r.sample(1000, 4), [989, 796, 451, 119]);
        assert_eq!(r.sample(10, 4), [0, 1, 9, 5]);
        let mut r = PyRandom::new(1234);
        assert_eq!(r.sample(40, 7), [28, 7, 0, 5, 2, 36, 6]);
        assert_eq!(
            r.sample(100000, 7),
            [46482, 31039, 2284, 4038, 2076, 45362, 84976]
        );
    }
}
