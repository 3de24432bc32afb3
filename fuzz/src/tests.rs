//! The targets on stable: every seed of `fuzz/corpus/<target>/`, then random byte mutations of
//! the seeds (what libFuzzer does first, without its coverage feedback).

use std::path::PathBuf;

use proptest::prelude::*;

type Target = fn(&[u8]) -> bool;

const TARGETS: [(&str, Target); 4] = [
    ("run_file", super::run_file),
    ("dataset_jsonl", super::dataset_jsonl),
    ("engine_response", super::engine_response),
    ("verifier", super::verifier),
];

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Every seed is accepted all the way, so mutations start from inputs that reach the deep
/// checks (a target whose seeds all fail to parse would fuzz only the first error path).
#[test]
fn every_seed_is_accepted() {
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name}: no seeds");
        for (i, seed) in seeds.iter().enumerate() {
            assert!(target(seed), "{name}: seed {i} is rejected");
        }
    }
}

/// One edit of a mutation: at a position (taken modulo the length), flip a bit, insert a byte,
/// delete a byte, duplicate a span, or append digits to the number that ends there (libFuzzer's
/// "change ASCII integer" mutation: ids, lengths and counts that grow past their bounds).
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Repeat(usize, usize, u8),
    Digits(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip(at, bit)),
        (any::<usize>(), prop_oneof![any::<u8>(), Just(b'"'), Just(b'-'), Just(b'9')])
            .prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), 1usize..64, 1u8..8)
            .prop_map(|(at, len, times)| Edit::Repeat(at, len, times)),
        (any::<usize>(), 1u8..12).prop_map(|(at, n)| Edit::Digits(at, n)),
    ]
}

fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len().max(1);
        match *e {
            Edit::Flip(at, bit) if !bytes.is_empty() => bytes[at % n] ^= 1 << bit,
            Edit::Insert(at, b) => bytes.insert(at % (bytes.len() + 1), b),
            Edit::Delete(at) if !bytes.is_empty() => {
                bytes.remove(at % n);
            }
            Edit::Repeat(at, len, times) if !bytes.is_empty() => {
                let start = at % n;
                let span = bytes[start..(start + len).min(bytes.len())].to_vec();
                for _ in 0..times {
                    bytes.splice(start..start, span.iter().copied());
                }
            }
            Edit::Digits(at, count) => {
                // The first digit at or after `at` (wrapping), if any: grow its number.
                let digit =
                    (0..bytes.len()).map(|k| (at + k) % n).find(|&k| bytes[k].is_ascii_digit());
                if let Some(k) = digit {
                    let nines = std::iter::repeat_n(b'9', usize::from(count));
                    bytes.splice(k..k, nines);
                }
            }
            _ => {}
        }
    }
    bytes
}

fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds(target);
    (0..seeds.len(), prop::collection::vec(edit(), 1..6))
        .prop_map(move |(i, edits)| mutate(seeds[i].clone(), &edits))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn run_file_mutations(data in mutated("run_file")) {
        super::run_file(&data);
    }

    #[test]
    fn dataset_jsonl_mutations(data in mutated("dataset_jsonl")) {
        super::dataset_jsonl(&data);
    }

    #[test]
    fn engine_response_mutations(data in mutated("engine_response")) {
        super::engine_response(&data);
    }

    #[test]
    fn verifier_mutations(data in mutated("verifier")) {
        super::verifier(&data);
    }

    #[test]
    fn arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        for (_, target) in TARGETS {
            target(&data);
        }
    }
}
