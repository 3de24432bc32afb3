//! rl-policy (work in progress).
