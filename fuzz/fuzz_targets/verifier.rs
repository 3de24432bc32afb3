//! libFuzzer driver for [`rl_zero_fuzz::verifier`]: `cargo fuzz run verifier --features libfuzzer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rl_zero_fuzz::verifier(data);
});
