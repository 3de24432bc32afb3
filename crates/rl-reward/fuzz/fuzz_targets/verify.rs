//! Any byte string, split into a gold and a response, must be verified without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let (gold, response) = s.split_at(s.floor_char_boundary(s.len() / 4));
        let _ = rl_reward::math::MathVerifier::default().check(gold, response);
    }
});
