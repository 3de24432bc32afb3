//! rl-advantage (work in progress).
