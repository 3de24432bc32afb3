//! rl-reward (work in progress).
