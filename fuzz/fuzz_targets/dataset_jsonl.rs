//! libFuzzer driver for [`rl_zero_fuzz::dataset_jsonl`]: `cargo fuzz run dataset_jsonl --features libfuzzer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rl_zero_fuzz::dataset_jsonl(data);
});
