//! A small LaTeX / plain-text expression parser and a bounded evaluator.
//!
//! Values are exact rationals ([`BigRational`]) while every operation stays rational (integer
//! powers, perfect-square roots, small factorials) and below [`MAX_BITS`]; anything else falls
//! back to `f64`. Free symbols are evaluated numerically at fixed pseudo-random points by the
//! comparison layer. Inputs are bounded: at most [`MAX_TOKENS`] tokens and [`MAX_DEPTH`] levels
//! of nesting, exponents of exact powers at most [`MAX_EXACT_EXP`].

use std::collections::BTreeSet;

use num_bigint::BigInt;
use num_integer::Integer;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};

/// Largest number of tokens an expression may have.
pub const MAX_TOKENS: usize = 2_000;
/// Deepest nesting of the recursive-descent parser.
pub const MAX_DEPTH: usize = 48;
/// Largest bit size of an exact numerator or denominator before falling back to `f64`.
pub const MAX_BITS: u64 = 4_096;
/// Largest absolute integer exponent computed exactly.
pub const MAX_EXACT_EXP: i64 = 2_048;

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// A number literal; `true` when it was written with a decimal point.
    Num(BigRational, bool),
    /// A free symbol (`x`, `\alpha`, `x_1`).
    Sym(String),
    /// π.
    Pi,
    /// Euler's number (`\mathrm{e}` normalises to `e`, which stays a symbol; `\exp` uses this).
    E,
    /// +∞.
    Inf,
    /// A sum.
    Add(Vec<Node>),
    /// A product.
    Mul(Vec<Node>),
    /// Negation.
    Neg(Box<Node>),
    /// Division.
    Div(Box<Node>, Box<Node>),
    /// Power.
    Pow(Box<Node>, Box<Node>),
    /// A named function of one argument (`sin`, `ln`, `sqrt`, `abs`, ...).
    Func(String, Box<Node>),
    /// The `n`-th root of `x`.
    Root(Box<Node>, Box<Node>),
    /// Factorial.
    Fact(Box<Node>),
}

/// A value: exact when possible.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// An exact rational.
    Exact(BigRational),
    /// A floating-point approximation (may be NaN or infinite).
    Approx(f64),
}

impl Value {
    /// The value as `f64`.
    pub fn to_f64(&self) -> f64 {
        match self {
            Value::Exact(r) => rat_to_f64(r),
            Value::Approx(x) => *x,
        }
    }
}

/// Converts a rational to `f64` without overflowing on big numerators and denominators.
pub fn rat_to_f64(r: &BigRational) -> f64 {
    if let (Some(n), Some(d)) = (r.numer().to_f64(), r.denom().to_f64())
        && n.is_finite()
        && d.is_finite()
        && d != 0.0
    {
        return n / d;
    }
    let shift = r.numer().bits().max(r.denom().bits()).saturating_sub(900);
    let n = (r.numer() >> shift).to_f64().unwrap_or(f64::NAN);
    let d = (r.denom() >> shift).to_f64().unwrap_or(f64::NAN);
    if d == 0.0 {
        if n.is_sign_negative() { f64::NEG_INFINITY } else { f64::INFINITY }
    } else {
        n / d
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(String),
    Ident(String),
    Cmd(String),
    Op(char),
    Open(char),
    Close(char),
}

const FUNCS: &[&str] = &[
    "sin", "cos", "tan", "sec", "csc", "cot", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
    "log", "ln", "exp", "lg",
];

/// Tokenises `s`; `None` on characters that cannot be part of an expression or on too many tokens.
fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let c: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    // After `\frac`, `\sqrt`, `^` and `_`, an unbraced digit argument is a single digit (`\frac12`).
    let mut single_digit = false;
    while i < c.len() {
        if out.len() > MAX_TOKENS {
            return None;
        }
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
            continue;
        }
        if ch.is_ascii_digit() || (ch == '.' && c.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            let start = i;
            if single_digit {
                i += 1;
            } else {
                while i < c.len() && c[i].is_ascii_digit() {
                    i += 1;
                }
                if i < c.len() && c[i] == '.' && c.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                    i += 1;
                    while i < c.len() && c[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            out.push(Tok::Num(c[start..i].iter().collect()));
            single_digit = false;
            continue;
        }
        single_digit = false;
        if ch == '\\' {
            let start = i + 1;
            let mut j = start;
            while j < c.len() && c[j].is_ascii_alphabetic() {
                j += 1;
            }
            if j == start {
                // `\{`, `\}`, `\|` and other escaped symbols.
                match c.get(start) {
                    Some('{') => out.push(Tok::Open('{')),
                    Some('}') => out.push(Tok::Close('}')),
                    Some('|') => out.push(Tok::Op('|')),
                    _ => {}
                }
                i = start + 1;
                continue;
            }
            let name: String = c[start..j].iter().collect();
            if matches!(name.as_str(), "frac" | "sqrt" | "binom") {
                single_digit = true;
            }
            out.push(Tok::Cmd(name));
            i = j;
            continue;
        }
        if ch.is_alphabetic() {
            let start = i;
            while i < c.len() && c[i].is_alphabetic() {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            // Known function names written without a backslash stay whole; other letter runs are
            // implicit products of single-letter symbols (`xy` = x·y).
            if FUNCS.contains(&word.as_str()) || word == "sqrt" || word == "pi" {
                single_digit = word == "sqrt";
                out.push(Tok::Cmd(word));
            } else {
                out.extend(word.chars().map(|l| Tok::Ident(l.to_string())));
            }
            continue;
        }
        match ch {
            '+' | '-' | '*' | '/' | '!' | '|' | ',' => out.push(Tok::Op(ch)),
            '^' | '_' => {
                out.push(Tok::Op(ch));
                single_digit = true;
            }
            '(' | '[' | '{' => out.push(Tok::Open(ch)),
            ')' | ']' | '}' => out.push(Tok::Close(ch)),
            '\'' | '&' => {}
            _ => return None,
        }
        i += 1;
    }
    Some(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

type PResult<T> = Result<T, ()>;

/// Parses a scalar expression. Commas, relations and unknown characters make it fail.
pub fn parse_expr(s: &str) -> Option<Node> {
    let toks = tokenize(s)?;
    if toks.is_empty() {
        return None;
    }
    let mut p = Parser { toks, pos: 0, depth: 0 };
    let node = p.expr().ok()?;
    (p.pos == p.toks.len()).then_some(node)
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH { Err(()) } else { Ok(()) }
    }

    fn expr(&mut self) -> PResult<Node> {
        self.enter()?;
        let mut terms = vec![self.term()?];
        while let Some(Tok::Op(op @ ('+' | '-'))) = self.peek().cloned() {
            self.pos += 1;
            let t = self.term()?;
            terms.push(if op == '-' { Node::Neg(Box::new(t)) } else { t });
        }
        self.depth -= 1;
        Ok(if terms.len() == 1 { terms.pop().ok_or(())? } else { Node::Add(terms) })
    }

    fn term(&mut self) -> PResult<Node> {
        let mut factors = vec![self.unary()?];
        loop {
            match self.peek() {
                Some(Tok::Op('*')) => {
                    self.pos += 1;
                    factors.push(self.unary()?);
                }
                Some(Tok::Cmd(c)) if matches!(c.as_str(), "cdot" | "times" | "ast") => {
                    self.pos += 1;
                    factors.push(self.unary()?);
                }
                Some(t) if matches!(t, Tok::Op('/')) || matches!(t, Tok::Cmd(c) if c == "div") => {
                    self.pos += 1;
                    let d = self.unary()?;
                    let n = std::mem::take(&mut factors);
                    let n =
                        if n.len() == 1 { n.into_iter().next().ok_or(())? } else { Node::Mul(n) };
                    factors.push(Node::Div(Box::new(n), Box::new(d)));
                }
                // Two bare numbers side by side (`4 2`) are two answers, not a product.
                Some(Tok::Num(_)) if matches!(factors.last(), Some(Node::Num(..))) => {
                    return Err(());
                }
                Some(Tok::Num(_) | Tok::Ident(_) | Tok::Open('(' | '{')) => {
                    factors.push(self.power()?)
                }
                Some(Tok::Cmd(c))
                    if !matches!(c.as_str(), "cdot" | "times" | "div" | "pm" | "mp") =>
                {
                    factors.push(self.power()?)
                }
                _ => break,
            }
        }
        Ok(if factors.len() == 1 { factors.pop().ok_or(())? } else { Node::Mul(factors) })
    }

    fn unary(&mut self) -> PResult<Node> {
        match self.peek() {
            Some(Tok::Op('-')) => {
                self.pos += 1;
                self.enter()?;
                let u = self.unary()?;
                self.depth -= 1;
                Ok(Node::Neg(Box::new(u)))
            }
            Some(Tok::Op('+')) => {
                self.pos += 1;
                self.enter()?;
                let u = self.unary();
                self.depth -= 1;
                u
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> PResult<Node> {
        let base = self.postfix()?;
        if let Some(Tok::Op('^')) = self.peek() {
            self.pos += 1;
            self.enter()?;
            let exp = match self.peek() {
                Some(Tok::Op('-' | '+')) => self.unary()?,
                _ => self.postfix()?,
            };
            self.depth -= 1;
            return Ok(Node::Pow(Box::new(base), Box::new(exp)));
        }
        Ok(base)
    }

    fn postfix(&mut self) -> PResult<Node> {
        let mut n = self.primary()?;
        while let Some(Tok::Op('!')) = self.peek() {
            self.pos += 1;
            n = Node::Fact(Box::new(n));
        }
        Ok(n)
    }

    /// A `{...}` group, or a single primary when there is no brace (`\frac12`, `\sqrt 3`).
    fn arg(&mut self) -> PResult<Node> {
        if let Some(Tok::Open('{')) = self.peek() {
            self.pos += 1;
            let e = self.expr()?;
            return match self.next() {
                Some(Tok::Close('}')) => Ok(e),
                _ => Err(()),
            };
        }
        self.enter()?;
        let p = self.postfix();
        self.depth -= 1;
        p
    }

    fn subscript(&mut self) -> PResult<String> {
        // Subscripts are names: `x_1`, `x_{10}`, `a_n`.
        let mut s = String::new();
        match self.next() {
            Some(Tok::Open('{')) => {
                let mut depth = 1;
                while let Some(t) = self.next() {
                    match &t {
                        Tok::Open(_) => depth += 1,
                        Tok::Close(_) => {
                            depth -= 1;
                            if depth == 0 {
                                return Ok(s);
                            }
                        }
                        _ => {}
                    }
                    s.push_str(&tok_text(&t));
                }
                Err(())
            }
            Some(t) => {
                s.push_str(&tok_text(&t));
                Ok(s)
            }
            None => Err(()),
        }
    }

    fn primary(&mut self) -> PResult<Node> {
        self.enter()?;
        let r = self.primary_inner();
        self.depth -= 1;
        r
    }

    fn primary_inner(&mut self) -> PResult<Node> {
        match self.next().ok_or(())? {
            Tok::Num(s) => {
                let n = parse_number(&s).ok_or(())?;
                if let Some(Tok::Op('_')) = self.peek() {
                    self.pos += 1;
                    let sub = self.subscript()?;
                    return Ok(match sub.parse::<u32>().ok().and_then(|b| from_base(&s, b)) {
                        Some(v) => Node::Num(BigRational::from_integer(v), false),
                        None => Node::Sym(format!("{s}_{sub}")),
                    });
                }
                // A mixed number `4 4/9` is handled by the caller (see `mixed_number`).
                Ok(Node::Num(n, s.contains('.')))
            }
            Tok::Ident(name) => {
                if let Some(Tok::Op('_')) = self.peek() {
                    self.pos += 1;
                    let sub = self.subscript()?;
                    return Ok(Node::Sym(format!("{name}_{sub}")));
                }
                // A bare `e` is Euler's number (as `\mathrm{e}` normalises to it).
                Ok(if name == "e" { Node::E } else { Node::Sym(name) })
            }
            Tok::Open(_) => {
                let e = self.expr()?;
                match self.next() {
                    Some(Tok::Close(_)) => Ok(e),
                    _ => Err(()),
                }
            }
            Tok::Op('|') => {
                let e = self.expr()?;
                match self.next() {
                    Some(Tok::Op('|')) => Ok(Node::Func("abs".into(), Box::new(e))),
                    _ => Err(()),
                }
            }
            Tok::Cmd(c) => self.command(&c),
            _ => Err(()),
        }
    }

    fn command(&mut self, c: &str) -> PResult<Node> {
        match c {
            "frac" | "over" => {
                let n = self.arg()?;
                let d = self.arg()?;
                Ok(Node::Div(Box::new(n), Box::new(d)))
            }
            "binom" => {
                let n = self.arg()?;
                let k = self.arg()?;
                let rest = Node::Add(vec![n.clone(), Node::Neg(Box::new(k.clone()))]);
                let den = Node::Mul(vec![Node::Fact(Box::new(k)), Node::Fact(Box::new(rest))]);
                Ok(Node::Div(Box::new(Node::Fact(Box::new(n))), Box::new(den)))
            }
            "sqrt" => {
                if let Some(Tok::Open('[')) = self.peek() {
                    self.pos += 1;
                    let n = self.expr()?;
                    if !matches!(self.next(), Some(Tok::Close(']'))) {
                        return Err(());
                    }
                    let x = self.arg()?;
                    return Ok(Node::Root(Box::new(n), Box::new(x)));
                }
                let x = self.arg()?;
                Ok(Node::Func("sqrt".into(), Box::new(x)))
            }
            "pi" => Ok(Node::Pi),
            "infty" | "infinity" => Ok(Node::Inf),
            "exp" => {
                let x = self.arg()?;
                Ok(Node::Pow(Box::new(Node::E), Box::new(x)))
            }
            f if FUNCS.contains(&f) => {
                // `\sin^2 x` = (sin x)^2; `\log_2 x` = log base 2.
                let mut power = None;
                let mut base = None;
                loop {
                    match self.peek() {
                        Some(Tok::Op('^')) => {
                            self.pos += 1;
                            power = Some(self.postfix()?);
                        }
                        Some(Tok::Op('_')) => {
                            self.pos += 1;
                            base = Some(self.postfix()?);
                        }
                        _ => break,
                    }
                }
                let x = self.arg()?;
                let mut n = Node::Func(f.to_string(), Box::new(x));
                if let Some(b) = base {
                    n = Node::Div(
                        Box::new(Node::Func(
                            "ln".into(),
                            Box::new(match n {
                                Node::Func(_, x) => *x,
                                other => other,
                            }),
                        )),
                        Box::new(Node::Func("ln".into(), Box::new(b))),
                    );
                }
                if let Some(p) = power {
                    n = Node::Pow(Box::new(n), Box::new(p));
                }
                Ok(n)
            }
            "mathrm" | "mathbf" | "text" | "operatorname" | "boxed" | "mathit" | "overline"
            | "vec" | "hat" | "bar" => self.arg(),
            other => {
                if let Some(Tok::Op('_')) = self.peek() {
                    self.pos += 1;
                    let sub = self.subscript()?;
                    return Ok(Node::Sym(format!("\\{other}_{sub}")));
                }
                Ok(Node::Sym(format!("\\{other}")))
            }
        }
    }
}

fn tok_text(t: &Tok) -> String {
    match t {
        Tok::Num(s) | Tok::Ident(s) => s.clone(),
        Tok::Cmd(s) => format!("\\{s}"),
        Tok::Op(c) | Tok::Open(c) | Tok::Close(c) => c.to_string(),
    }
}

fn from_base(digits: &str, base: u32) -> Option<BigInt> {
    if !(2..=36).contains(&base) || digits.contains('.') || base == 10 {
        return None;
    }
    BigInt::parse_bytes(digits.as_bytes(), base)
}

/// Parses a decimal literal (`12`, `0.5`, `.5`, `007`) exactly.
pub fn parse_number(s: &str) -> Option<BigRational> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.len() + frac.len() > 400 || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    // Up to 38 digits fit in a `u128`: the same reduced rational without big-integer parsing.
    if int.len() + frac.len() <= 38 {
        let digits = || int.bytes().chain(frac.bytes());
        if digits().all(|b| b.is_ascii_digit()) {
            let n = digits().fold(0u128, |acc, b| acc * 10 + u128::from(b - b'0'));
            let d = 10u128.pow(frac.len() as u32);
            let g = n.gcd(&d);
            return Some(BigRational::new_raw(BigInt::from(n / g), BigInt::from(d / g)));
        }
    }
    let digits = format!("{int}{frac}");
    let n = if digits.is_empty() { BigInt::zero() } else { digits.parse::<BigInt>().ok()? };
    let d = BigInt::from(10u32).pow(frac.len() as u32);
    Some(BigRational::new(n, d))
}

/// `true` when the expression contains a decimal literal (so it is an approximation).
pub fn has_decimal(n: &Node) -> bool {
    let mut found = false;
    visit(n, &mut |x| {
        if let Node::Num(_, true) = x {
            found = true;
        }
    });
    found
}

impl Node {
    /// The number of nodes of the expression tree.
    pub fn size(&self) -> usize {
        let mut count = 0usize;
        visit(self, &mut |_| count += 1);
        count
    }
}

/// The free symbols of an expression.
pub fn symbols(n: &Node) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    visit(n, &mut |x| {
        if let Node::Sym(s) = x {
            out.insert(s.clone());
        }
    });
    out
}

fn visit(n: &Node, f: &mut dyn FnMut(&Node)) {
    f(n);
    match n {
        Node::Add(v) | Node::Mul(v) => v.iter().for_each(|c| visit(c, f)),
        Node::Neg(a) | Node::Func(_, a) | Node::Fact(a) => visit(a, f),
        Node::Div(a, b) | Node::Pow(a, b) | Node::Root(a, b) => {
            visit(a, f);
            visit(b, f);
        }
        Node::Num(..) | Node::Sym(_) | Node::Pi | Node::E | Node::Inf => {}
    }
}

fn too_big(r: &BigRational) -> bool {
    r.numer().bits() > MAX_BITS || r.denom().bits() > MAX_BITS
}

fn exact(r: BigRational) -> Value {
    if too_big(&r) { Value::Approx(rat_to_f64(&r)) } else { Value::Exact(r) }
}

/// Evaluates `n`, with `env` giving the value of each free symbol (missing symbols are NaN).
pub fn eval(n: &Node, env: &dyn Fn(&str) -> f64) -> Value {
    match n {
        Node::Num(r, _) => Value::Exact(r.clone()),
        Node::Sym(s) => Value::Approx(env(s)),
        Node::Pi => Value::Approx(std::f64::consts::PI),
        Node::E => Value::Approx(std::f64::consts::E),
        Node::Inf => Value::Approx(f64::INFINITY),
        Node::Add(v) => fold(v, env, BigRational::zero(), |a, b| a + b, |a, b| a + b),
        Node::Mul(v) => fold(v, env, BigRational::one(), |a, b| a * b, |a, b| a * b),
        Node::Neg(a) => match eval(a, env) {
            Value::Exact(r) => Value::Exact(-r),
            Value::Approx(x) => Value::Approx(-x),
        },
        Node::Div(a, b) => match (eval(a, env), eval(b, env)) {
            (Value::Exact(x), Value::Exact(y)) if !y.is_zero() => exact(x / y),
            (x, y) => Value::Approx(x.to_f64() / y.to_f64()),
        },
        Node::Pow(a, b) => pow(eval(a, env), eval(b, env)),
        Node::Root(k, x) => {
            let k = eval(k, env);
            pow(
                eval(x, env),
                match k {
                    Value::Exact(r) if !r.is_zero() => Value::Exact(r.recip()),
                    other => Value::Approx(1.0 / other.to_f64()),
                },
            )
        }
        Node::Fact(a) => match eval(a, env) {
            Value::Exact(r) if r.is_integer() && !r.is_negative() => {
                match r.to_integer().to_u32() {
                    Some(k) if k <= 300 => Value::Exact(BigRational::from_integer(
                        (1..=k).fold(BigInt::one(), |acc, i| acc * i),
                    )),
                    _ => Value::Approx(f64::INFINITY),
                }
            }
            other => Value::Approx(gamma_fact(other.to_f64())),
        },
        Node::Func(name, a) => func(name, eval(a, env)),
    }
}

fn gamma_fact(x: f64) -> f64 {
    if x.fract() == 0.0 && (0.0..=170.0).contains(&x) {
        (1..=x as u32).fold(1.0, |acc, i| acc * i as f64)
    } else {
        f64::NAN
    }
}

fn fold(
    v: &[Node],
    env: &dyn Fn(&str) -> f64,
    unit: BigRational,
    fr: fn(BigRational, BigRational) -> BigRational,
    ff: fn(f64, f64) -> f64,
) -> Value {
    let mut acc = Value::Exact(unit);
    for c in v {
        acc = match (acc, eval(c, env)) {
            (Value::Exact(x), Value::Exact(y)) => exact(fr(x, y)),
            (x, y) => Value::Approx(ff(x.to_f64(), y.to_f64())),
        };
    }
    acc
}

fn pow(base: Value, exp: Value) -> Value {
    if let (Value::Exact(b), Value::Exact(e)) = (&base, &exp)
        && let Some(v) = exact_pow(b, e)
    {
        return v;
    }
    Value::Approx(base.to_f64().powf(exp.to_f64()))
}

fn exact_pow(b: &BigRational, e: &BigRational) -> Option<Value> {
    let p = e.numer().to_i64()?;
    let q = e.denom().to_u32()?;
    if p.abs() > MAX_EXACT_EXP || q > 16 {
        return None;
    }
    if b.is_zero() {
        return (p > 0).then(|| Value::Exact(BigRational::zero()));
    }
    // The q-th root must be exact (and real).
    let root = if q == 1 {
        b.clone()
    } else {
        if b.is_negative() && q % 2 == 0 {
            return None;
        }
        let (n, d) = (b.numer().abs(), b.denom().clone());
        let (rn, rd) = (n.nth_root(q), d.nth_root(q));
        if rn.pow(q) != n || rd.pow(q) != d {
            return None;
        }
        let r = BigRational::new(rn, rd);
        if b.is_negative() { -r } else { r }
    };
    let bits = root.numer().bits().max(root.denom().bits());
    if bits.saturating_mul(p.unsigned_abs()) > MAX_BITS {
        return None;
    }
    let mut r = num_traits::pow(root, p.unsigned_abs() as usize);
    if p < 0 {
        r = r.recip();
    }
    Some(Value::Exact(r))
}

fn func(name: &str, x: Value) -> Value {
    if name == "sqrt" {
        return pow(x, Value::Exact(BigRational::new(1.into(), 2.into())));
    }
    if name == "abs" {
        return match x {
            Value::Exact(r) => Value::Exact(r.abs()),
            Value::Approx(v) => Value::Approx(v.abs()),
        };
    }
    let v = x.to_f64();
    Value::Approx(match name {
        "sin" => v.sin(),
        "cos" => v.cos(),
        "tan" => v.tan(),
        "sec" => 1.0 / v.cos(),
        "csc" => 1.0 / v.sin(),
        "cot" => 1.0 / v.tan(),
        "arcsin" => v.asin(),
        "arccos" => v.acos(),
        "arctan" => v.atan(),
        "sinh" => v.sinh(),
        "cosh" => v.cosh(),
        "tanh" => v.tanh(),
        "ln" => v.ln(),
        "log" | "lg" => v.log10(),
        _ => f64::NAN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(s: &str) -> Value {
        eval(&parse_expr(s).expect(s), &|_| f64::NAN)
    }

    fn q(n: i64, d: i64) -> Value {
        Value::Exact(BigRational::new(n.into(), d.into()))
    }

    #[test]
    fn exact_arithmetic() {
        assert_eq!(val("\\frac{10}{9}"), q(10, 9));
        assert_eq!(val("\\frac12"), q(1, 2));
        assert_eq!(val("\\frac94\\cdot 4"), q(9, 1));
        assert_eq!(val("2^{10}"), q(1024, 1));
        assert!((val("\\sqrt{117}/\\sqrt{13}").to_f64() - 3.0).abs() < 1e-12);
        assert_eq!(val("\\sqrt{4}"), q(2, 1));
        assert_eq!(val("8^{2/3}"), q(4, 1));
        assert_eq!(val("5!"), q(120, 1));
        assert_eq!(val("0.25"), q(1, 4));
        assert_eq!(val("204_5"), q(54, 1));
        assert_eq!(val("-2^2"), q(-4, 1));
        assert_eq!(val("2(3+4)"), q(14, 1));
    }

    #[test]
    fn bounded() {
        assert!(matches!(val("2^{2^{2^{2^{2^{2}}}}}"), Value::Approx(_)));
        assert!(matches!(val("10^{100000}"), Value::Approx(_)));
        let deep = format!("{}1{}", "(".repeat(500), ")".repeat(500));
        assert!(parse_expr(&deep).is_none());
        assert!(matches!(val("1000!"), Value::Approx(_)));
    }
}
