//! Multi-process checks of data-parallel training. The `rl-dp-worker` binary runs a few trainer
//! steps on the tiny decoder as one rank of a group (`rl_dist::init()`: torchrun / launcher
//! environment, or one process without it) and prints its parameters and metrics; the tests
//! launch 1, 2 and 3 ranks and compare.
