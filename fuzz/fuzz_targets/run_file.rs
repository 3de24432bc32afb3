//! libFuzzer driver for [`rl_zero_fuzz::run_file`]: `cargo fuzz run run_file --features libfuzzer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rl_zero_fuzz::run_file(data);
});
