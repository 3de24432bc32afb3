//! Verifier behaviour on typical grader pairs (Hendrycks MATH / Qwen2.5-Math style), adversarial
//! inputs, and a property test that random strings never panic.

use std::time::Instant;

use proptest::prelude::*;
use rl_reward::math::{MathVerifier, extract_answer};

fn eq(gold: &str, pred: &str) -> bool {
    MathVerifier::default().equivalent(gold, pred)
}

#[test]
fn equivalent_forms() {
    let yes = [
        ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"),
        ("\\frac12", "0.5"),
        ("\\dfrac{3}{4}", "0.75"),
        ("(x+1)^2", "x^2+2x+1"),
        ("\\text{(A)}", "A"),
        ("10\\%", "10"),
        ("\\$5", "5"),
        ("5 \\text{ cm}", "5"),
        ("3\\sqrt{2}", "\\sqrt{18}"),
        ("2\\pi", "6.2832"),
        ("(-\\infty, 3]", "(-\\infty,3]"),
        ("\\{1,2\\}", "\\{2,1\\}"),
        ("x=2", "2"),
        ("1/2", "\\frac{1}{2}"),
        ("50^\\circ", "50"),
        ("\\sqrt[3]{2}", "2^{1/3}"),
        ("-3", "−3"),
        ("1,000,000", "1000000"),
        ("007", "7"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1, 2)"),
        ("y = 2x + 3", "y=3+2x"),
        ("2 \\le x < 5", "x \\in [2, 5)"),
        ("3 \\frac{1}{2}", "\\frac{7}{2}"),
        ("\\binom{5}{2}", "10"),
        ("5!", "120"),
        ("2^{10}", "1024"),
        ("\\sin^2 x + \\cos^2 x", "1"),
        ("\\frac{\\pi}{3}", "60^\\circ\\cdot\\frac{\\pi}{180}"),
        ("1 \\pm \\sqrt{2}", "1 - \\sqrt 2, 1+\\sqrt 2"),
        ("(0, \\infty)", "x > 0"),
        ("(-\\infty, 2]", "x \\le 2"),
        ("[3, \\infty)", "3 \\leq x"),
        ("\\text{Monday}", "monday"),
        ("\\$42.50", "42.5"),
        ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
        ("y = 2x + 1", "2x+1"),
        ("(2, 3)", "a = 2, b = 3"),
        ("\\frac{3}{2}", "1\\frac{1}{2}"),
        ("2 \\times 10^{5}", "200000"),
        ("4.5", "4.5 \\text{ hours}"),
        ("\\pi", "3.14159"),
        ("6\\sqrt{3}", "6\\sqrt{3}\\text{ cm}^2"),
        ("e^{2}", "\\exp(2)"),
        ("3 + 4i", "4i + 3"),
        ("\\$18.90", "18.9"),
        ("(-\\infty, -2) \\cup (3, \\infty)", "(3,\\infty)\\cup(-\\infty,-2)"),
        ("\\emptyset", "\\varnothing"),
        ("2, 3", "x = 2 or x = 3"),
        ("\\sqrt{3}", "sqrt3"),
        ("\\infty", "infinity"),
        ("6.02 \\times 10^{23}", "6.02e23"),
        ("0.0015", "1.5E-3"),
        ("5", "5\\,\\text{m/s}"),
    ];
    for (g, p) in yes {
        assert!(eq(g, p), "expected equal: {g:?} vs {p:?}");
    }
}

#[test]
fn different_answers() {
    let no = [
        ("3", "2"),
        ("12", "1.2"),
        ("\\frac{1}{3}", "0.33"),
        ("16386.17", "16386.16"),
        ("(1, 2)", "(2, 1)"),
        ("[0, 1)", "[0, 1]"),
        ("x^2", "2x"),
        ("\\sqrt{2}", "1.41"),
        ("10", "10x"),
        ("\\{1, 2\\}", "\\{1, 2, 3\\}"),
        ("2", "-2"),
        ("1000", "10000"),
        ("\\infty", "-\\infty"),
        ("\\begin{pmatrix} 1 & 2 \\end{pmatrix}", "\\begin{pmatrix} 2 & 1 \\end{pmatrix}"),
        ("x > 1", "x \\ge 1"),
        ("A", "B"),
        ("(3, 4)", "3, 4, 5"),
        ("\\pi", "3.14"),
        ("(0, \\infty)", "x \\ge 0"),
        ("1", "1, 2"),
        ("12:00", "1:00"),
        ("5", ""),
    ];
    for (g, p) in no {
        assert!(!eq(g, p), "expected different: {g:?} vs {p:?}");
    }
}

/// A calculation left unevaluated is not the answer to a numeric question (the reward hack a
/// SmolLM2 run found: answering `10 + 10` to *What is 10 + 10?*), unless asked for
/// (`accept_unevaluated`, Math-Verify's behaviour); number forms and exact forms still match.
#[test]
fn unevaluated_calculations_do_not_answer_numeric_questions() {
    use rl_reward::math::VerifyConfig;
    let lenient =
        MathVerifier::new(VerifyConfig { accept_unevaluated: true, ..Default::default() });
    for (gold, pred) in [
        ("20", "10 + 10"),
        ("20", "\\boxed{10+10}"),
        ("108", "19 + 89 = 19 + 89"),
        ("-73", "17 - 90"),
        ("20", "2 \\times 10"),
        ("8", "2^3"),
        ("10", "(9+1)"),
        ("0.5", "1/4 + 1/4"),
    ] {
        assert!(!eq(gold, pred), "{gold} / {pred}");
        assert!(lenient.equivalent(gold, pred), "lenient: {gold} / {pred}");
    }
    for (gold, pred) in [
        ("20", "10 + 10 = 20"),
        ("20", "\\boxed{20}"),
        ("20", "\\frac{40}{2}"),
        ("-73", "-73"),
        ("0.5", "50\\%"),
        ("107/9", "11 \\frac{8}{9}"),
        ("4.123105625617661", "\\sqrt{17}"),
        ("2\\sqrt{3}", "\\sqrt{12}"),
        ("x + 1", "1 + x"),
    ] {
        assert!(eq(gold, pred), "{gold} / {pred}");
    }
}

#[test]
fn extraction_order() {
    let ex = |s: &str| extract_answer(s).map(|e| e.text);
    assert_eq!(ex("<think>maybe \\boxed{1}</think><answer>2</answer>").as_deref(), Some("2"));
    assert_eq!(ex("We get 3 and then 4. The final answer is 5.").as_deref(), Some("5"));
    assert_eq!(ex("first $x = 1$, so there are 7 ways").as_deref(), Some("7"));
    assert_eq!(ex("The roots are \\boxed{2} and \\boxed{3}.").as_deref(), Some("2, 3"));
    assert_eq!(ex("no numbers here"), None);
    assert_eq!(ex("**Answer:** 42").as_deref(), Some("42"));
    assert_eq!(ex("The final answer is 42 dollars.").as_deref(), Some("42"));
    assert_eq!(ex("The answer is $\\frac{1}{2}$ meters.").as_deref(), Some("\\frac{1}{2}"));
    assert_eq!(ex("#### 1,234").as_deref(), Some("1,234"));
    assert_eq!(ex("so \\boxed{5}. Please put the final answer in \\boxed{}").as_deref(), Some("5"));
}

#[test]
fn adversarial_inputs_are_bounded() {
    let inputs = [
        format!("\\boxed{{{}}}", "{".repeat(100_000)),
        format!("\\boxed{{{}1{}}}", "(".repeat(10_000), ")".repeat(10_000)),
        "\\boxed{9^{9^{9^{9^{9^{9}}}}}}".to_string(),
        "\\boxed{10^{10^{10}}!}".to_string(),
        format!("\\boxed{{{}}}", "1+".repeat(20_000) + "1"),
        format!("\\boxed{{{}}}", "\\sqrt{".repeat(5_000) + "2" + &"}".repeat(5_000)),
        format!("\\boxed{{{}}}", "x^".repeat(3_000) + "x"),
        "$".repeat(50_000),
        "1,".repeat(30_000),
        format!("\\boxed{{\\begin{{pmatrix}}{}\\end{{pmatrix}}}}", "1&".repeat(5_000)),
        "\\frac".repeat(10_000),
    ];
    for s in &inputs {
        let t = Instant::now();
        let _ = MathVerifier::default().check("2", s);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!("{:>8.2} ms  {}", ms, &s[..s.len().min(40)]);
        assert!(ms < 2_000.0, "took {ms} ms on {}", &s[..40.min(s.len())]);
    }
}

/// A `k × k` matrix environment whose entries are `f(i, j)`.
fn matrix(k: usize, f: impl Fn(usize, usize) -> String) -> String {
    let rows: Vec<String> =
        (0..k).map(|i| (0..k).map(|j| f(i, j)).collect::<Vec<_>>().join(" & ")).collect();
    format!("\\begin{{pmatrix}}{}\\end{{pmatrix}}", rows.join(" \\\\ "))
}

#[test]
fn matrix_sizes_from_input_are_bounded() {
    let v = MathVerifier::default();
    // A chain of eight 10 × 10 products would build expression trees of ~10^9 nodes.
    let m = matrix(10, |i, j| ((i + j) % 3).to_string());
    let chain = vec![m.clone(); 8].join(" ");
    let t = Instant::now();
    assert!(!v.check(&m, &format!("\\boxed{{{chain}}}")).correct);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(ms < 2_000.0, "product chain took {ms} ms");
    // Beyond 256 entries a matrix is compared as text, never cut: two 17 × 17 matrices that
    // differ only in their last entry are different.
    let big = matrix(17, |_, _| "0".into());
    let big_last = matrix(17, |i, j| if i == 16 && j == 16 { "1".into() } else { "0".into() });
    assert!(v.check(&big, &format!("\\boxed{{{big}}}")).correct);
    assert!(!v.check(&big, &format!("\\boxed{{{big_last}}}")).correct);
    // 16 × 16 (256 entries) is still compared entry-wise.
    let m16 = matrix(16, |i, j| format!("\\frac{{{}}}{{2}}", i + j));
    let m16_dec = matrix(16, |i, j| format!("{}", (i + j) as f64 / 2.0));
    assert!(v.check(&m16, &format!("\\boxed{{{m16_dec}}}")).correct);
}

#[test]
fn vectors_and_matrices_grade_entry_wise() {
    let v = MathVerifier::default();
    let gold = "\\begin{pmatrix} -1 \\\\ 0 \\\\ 7 \\end{pmatrix}";
    assert!(v.check(gold, &format!("\\boxed{{{gold}}}")).correct);
    assert!(!v.check(gold, "\\boxed{7}").correct);
    assert!(!v.check(gold, "The answer is 7.").correct);
    let two_i = "\\begin{bmatrix} 2 & 0 \\\\ 0 & 2 \\end{bmatrix}";
    assert!(!v.check(two_i, "\\boxed{2}").correct);
    assert!(
        v.check(two_i, "\\boxed{\\begin{pmatrix} 2 & 0 \\\\ 0 & \\frac{4}{2} \\end{pmatrix}}")
            .correct
    );
    let arr = "\\begin{array}{c} 3 \\\\ 5 \\end{array}";
    assert!(!v.check(arr, "\\boxed{5}").correct);
    assert!(v.check(arr, "\\boxed{\\begin{pmatrix} 3 \\\\ 5 \\end{pmatrix}}").correct);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_strings_never_panic(gold in "\\PC{0,40}", pred in "\\PC{0,200}") {
        let _ = MathVerifier::default().check(&gold, &pred);
    }

    #[test]
    fn random_latex_never_panics(pred in "(\\\\boxed\\{|\\\\frac|\\{|\\}|\\^|_|[0-9]|[xy]|\\\\sqrt|\\$|,|\\(|\\)|\\[|\\]|=|<|\\\\pm|\\\\cup|%|\\.| |\\\\left|\\\\right|\\\\begin\\{pmatrix\\}|\\\\end\\{pmatrix\\}|&|\\\\\\\\){0,60}") {
        let _ = MathVerifier::default().check("1", &pred);
    }

    #[test]
    fn integers_match_themselves(n in any::<i64>()) {
        let s = n.to_string();
        let boxed = |x: &str| ["so \\boxed{", x, "}"].concat();
        prop_assert!(MathVerifier::default().check(&s, &boxed(&s)).correct);
        prop_assert!(!MathVerifier::default().check(&s, &boxed(&(n as i128 + 1).to_string())).correct);
    }
}
