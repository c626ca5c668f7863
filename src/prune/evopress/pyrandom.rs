//! CPython's `random` module, draw for draw: EvoPress's search is driven by it (seeded by
//! `random.seed(seed)`, as the 2SSP authors' `set_seed`), so a seeded search here makes the moves
//! the authors' code makes. The Mersenne Twister and its `init_by_array` seeding come from
//! `rand_mt`; the functions below are CPython 3.11's `Lib/random.py` on top of it.

use rand_mt::Mt;

/// A Python `random.Random(seed)`.
pub struct PyRandom {
    mt: Mt,
}

impl PyRandom {
    /// `random.Random(seed)`: the seed's 32-bit words, least significant first, as the key.
    pub fn new(seed: u64) -> Self {
        let key: Vec<u32> = if seed >> 32 == 0 {
            vec![seed as u32]
        } else {
            vec![seed as u32, (seed >> 32) as u32]
        };
        Self {
            mt: Mt::new_with_key(key),
        }
    }

    /// `getrandbits(k)` for `1 <= k <= 32`.
    fn getrandbits(&mut self, k: u32) -> u32 {
        self.mt.next_u32() >> (32 - k)
    }

    /// `_randbelow(n)`: uniform in `0..n` by rejection of `n.bit_length()`-bit draws.
    pub fn randbelow(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let k = usize::BITS - n.leading_zeros();
        assert!(k <= 32, "randbelow({n}): more than 32 bits");
        loop {
            let r = self.getrandbits(k) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// `randint(a, b)`: uniform in `a..=b`.
    pub fn randint(&mut self, a: usize, b: usize) -> usize {
        a + self.randbelow(b - a + 1)
    }

    /// `choice(seq)`'s index into a sequence of `len` items.
    pub fn choice_index(&mut self, len: usize) -> usize {
        self.randbelow(len)
    }

    /// `sample(range(n), k)`: `k` distinct values of `0..n` in draw order.
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample larger than population");
        let mut setsize = 21usize;
        if k > 5 {
            setsize += 4usize.pow(((k * 3) as f64).log(4.0).ceil() as u32);
        }
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            (0..k)
                .map(|i| {
                    let j = self.randbelow(n - i);
                    let picked = pool[j];
                    pool[j] = pool[n - i - 1];
                    picked
                })
                .collect()
        } else {
            let mut selected = std::collections::HashSet::with_capacity(k);
            (0..k)
                .map(|_| loop {
                    let j = self.randbelow(n);
                    if selected.insert(j) {
                        break j;
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PyRandom;
    use serde_json::Value;

    fn ints(v: &Value) -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    }

    /// Draws recorded from CPython by tools/make_pyrandom_fixture.py.
    #[test]
    fn draws_equal_cpythons() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pyrandom.json");
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for case in fixture["cases"].as_array().unwrap() {
            let mut rng = PyRandom::new(case["seed"].as_u64().unwrap());
            let bits: Vec<usize> = (0..5).map(|_| rng.getrandbits(32) as usize).collect();
            assert_eq!(bits, ints(&case["getrandbits32"]), "seed {}", case["seed"]);
            let got: Vec<usize> = (0..20).map(|_| rng.randint(0, 29)).collect();
            assert_eq!(got, ints(&case["randint_0_29"]));
            let got: Vec<usize> = (0..10).map(|_| rng.randint(1, 3)).collect();
            assert_eq!(got, ints(&case["randint_1_3"]));
            assert_eq!(rng.sample(30, 12), ints(&case["sample_30_12"]));
            assert_eq!(rng.sample(200, 12), ints(&case["sample_200_12"]));
            assert_eq!(rng.sample(4, 2), ints(&case["sample_4_2"]));
            let got: Vec<usize> = (0..10).map(|_| rng.choice_index(7)).collect();
            assert_eq!(got, ints(&case["choice_of_7"]));
            let got: Vec<usize> = (0..5).map(|_| rng.randint(0, 1_000_000)).collect();
            assert_eq!(got, ints(&case["randint_0_1000000"]));
        }
    }
}
