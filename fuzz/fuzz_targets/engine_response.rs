//! libFuzzer driver for [`rl_zero_fuzz::engine_response`]: `cargo fuzz run engine_response --features libfuzzer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rl_zero_fuzz::engine_response(data);
});
