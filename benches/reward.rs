//! Verifier throughput on typical gold/response pairs: `cargo bench --bench reward`.

// criterion_group!/criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use rl_zero::reward::MathVerifier;

const PAIRS: &[(&str, &str)] = &[
    ("85", "37 + 48 = 85, so the answer is \\boxed{85}."),
    ("\\frac{1}{2}", "The probability is $\\boxed{0.5}$."),
    ("(1, \\frac{9}{2})", "Thus the point is \\boxed{\\left(1, 4.5\\right)}."),
    ("3\\sqrt{13}", "We get \\sqrt{117} = \\boxed{3\\sqrt{13}}."),
    ("[0, 1)", "The domain is $[0,1)$."),
    ("x^2+2x+1", "Expanding, \\boxed{(x+1)^2}"),
    (
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        "\\boxed{\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}}",
    ),
    ("12", "Final Answer: The final answer is 12. I hope it is correct."),
];

fn bench(c: &mut Criterion) {
    let v = MathVerifier::default();
    c.bench_function("verify 8 pairs", |b| {
        b.iter(|| {
            for (g, p) in PAIRS {
                black_box(v.check(black_box(g), black_box(p)));
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
