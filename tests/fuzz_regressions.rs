//! Every fuzz target (src/fuzzing.rs) on its committed corpus and findings
//! (tests/fixtures/fuzz/<target>/, seeds by tools/make_fuzz_seeds.py, crashes found by
//! scripts/fuzz.sh), then on seeded structure-aware mutations of them: none may panic.
//! Coverage-guided runs are scripts/fuzz.sh (AFL++); this is their fast, deterministic replay.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use twossp_engine::fuzzing::{clean_scratch, corpus, TARGETS};

/// Mutated inputs per corpus file.
const MUTATIONS_PER_SEED: usize = 300;

/// splitmix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Integers that break size arithmetic, as they sit in headers (u32/u64 little-endian).
const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    u64::MAX,
];

/// One byte-level mutation: bit flips, interesting integers over 4/8 bytes, deletions,
/// duplications, truncation, splicing another seed.
fn mutate_bytes(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    let ops = 1 + rng.below(4);
    for _ in 0..ops {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len >= 8 => {
                let i = rng.below(len - 7);
                let x = INTERESTING[rng.below(INTERESTING.len())];
                v[i..i + 8].copy_from_slice(&x.to_le_bytes());
            }
            2 if len >= 4 => {
                let i = rng.below(len - 3);
                let x = INTERESTING[rng.below(INTERESTING.len())] as u32;
                v[i..i + 4].copy_from_slice(&x.to_le_bytes());
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(64)) + 1;
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(64)) + 1;
                let chunk = v[i..i + n].to_vec();
                let at = rng.below(len);
                v.splice(at..at, chunk);
            }
            5 => v.truncate(rng.below(len + 1)),
            _ if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    v
}

/// A JSON-aware mutation: numbers become extreme, strings and types change, keys and array
/// items disappear or repeat (what a hand-edited or hostile config.json holds).
fn mutate_json(rng: &mut Rng, input: &[u8]) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(input).ok()?;
    for _ in 0..1 + rng.below(3) {
        let mut paths = Vec::new();
        collect_paths(&value, &mut Vec::new(), &mut paths);
        if paths.is_empty() {
            break;
        }
        let path = paths[rng.below(paths.len())].clone();
        let replacement = match rng.below(8) {
            0 => serde_json::json!(INTERESTING[rng.below(INTERESTING.len())]),
            1 => serde_json::json!(-1),
            2 => serde_json::json!(1e300),
            3 => serde_json::json!(0.0),
            4 => serde_json::json!("silu"),
            5 => serde_json::Value::Null,
            6 => serde_json::json!([]),
            _ => serde_json::json!({"no_op": true}),
        };
        set_path(&mut value, &path, replacement);
    }
    serde_json::to_vec(&value).ok()
}

fn collect_paths(v: &serde_json::Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m {
                at.push(k.clone());
                out.push(at.clone());
                collect_paths(child, at, out);
                at.pop();
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate().take(16) {
                at.push(i.to_string());
                out.push(at.clone());
                collect_paths(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn set_path(v: &mut serde_json::Value, path: &[String], new: serde_json::Value) {
    let mut cur = v;
    for key in path {
        cur = match cur {
            serde_json::Value::Object(m) => m.get_mut(key).unwrap(),
            serde_json::Value::Array(a) => &mut a[key.parse::<usize>().unwrap()],
            _ => return,
        };
    }
    *cur = new;
}

#[test]
fn fuzz_targets_survive_their_corpus_and_mutations() {
    let root = common::fixtures().join("fuzz");
    let mut failures = Vec::new();
    let mut executions = 0usize;
    for &(name, target) in TARGETS {
        let files = corpus(&root, name);
        assert!(!files.is_empty(), "no corpus for target {name}");
        let inputs: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        let json = matches!(name, "config" | "tokenizer_json");
        let mut rng = Rng(0x255_0000 + name.len() as u64);
        for (i, input) in inputs.iter().enumerate() {
            let other = &inputs[(i + 1) % inputs.len()];
            let mut cases = vec![input.clone()];
            for _ in 0..MUTATIONS_PER_SEED {
                let structured = json && rng.below(2) == 0;
                let case = if structured {
                    mutate_json(&mut rng, input)
                } else {
                    None
                };
                cases.push(case.unwrap_or_else(|| mutate_bytes(&mut rng, input, other)));
            }
            for case in cases {
                executions += 1;
                if catch_unwind(AssertUnwindSafe(|| target(&case))).is_err() {
                    let dump = std::env::temp_dir()
                        .join(format!("twossp-fuzz-failure-{name}-{}.bin", failures.len()));
                    std::fs::write(&dump, &case).unwrap();
                    failures.push(format!(
                        "{name}: panic on an input saved as {}",
                        dump.display()
                    ));
                }
            }
        }
    }
    clean_scratch();
    println!("{executions} executions over {} targets", TARGETS.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
