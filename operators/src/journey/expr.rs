//! The predicate language of journeys, shared by entry triggers and `condition` steps. Parsed once when
//! the journey file loads; evaluated per event against a [`Context`].
//!
//! ```text
//! expr     := or
//! or       := and ("or" and)*
//! and      := not ("and" not)*
//! not      := "not" not | primary
//! primary  := "(" expr ")"
//!           | "exists" "(" path ")"
//!           | "happened" "(" name ["," duration] ")"   -- the subject had this event (within the duration)
//!           | "consent" "(" channel ["," purpose] ")"  -- consent granted (or defaulted to allow)
//!           | "in_segment" "(" name ")"                -- the subject is a member of the segment now
//!           | operand [ cmp operand | "in" list | "not" "in" list | "between" operand "and" operand
//!                     | "starts_with" operand ]
//! cmp      := "==" | "!=" | "<" | "<=" | ">" | ">="
//! operand  := path | string | number | "true" | "false" | "null"
//!           | "count" "(" name "," duration ")"      -- the subject's events of this type within the duration
//! path     := name ("." name)*        -- event.type, event.attributes.plan, subject.country, vars.coupon,
//!                                        profile.plan (the subject's profile: fields and attributes)
//! list     := "[" [operand ("," operand)*] "]"
//! ```
//!
//! A path that does not resolve is `null`; comparisons with `null` other than `==`/`!=` are false, and
//! numbers compare with numbers, strings with strings (anything else is false, never an error at run
//! time: bad events must not stop a journey, only fail its predicate).

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use touchpoint_schemas::{Channel, Purpose};

/// What an expression reads: the triggering event, the subject, the journey's variables, history and
/// consent.
pub trait Context {
    /// The value at `path` (`["event", "attributes", "plan"]`), if any.
    fn value(&self, path: &[String]) -> Option<Value>;
    /// Whether the subject had an event of `event_type`, within `within` before now (event time), or ever.
    fn happened(&self, event_type: &str, within: Option<Duration>) -> bool;
    /// Whether a send on `channel` for `purpose` would pass consent now.
    fn consent(&self, channel: Channel, purpose: Purpose) -> bool;
    /// How many events of `event_type` the subject had within `within` before now (event time), as far
    /// as the context keeps them.
    fn count(&self, _event_type: &str, _within: Duration) -> u64 {
        0
    }
    /// Whether the subject is a member of the segment `name` now.
    fn in_segment(&self, _name: &str) -> bool {
        false
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(Vec<String>),
    Literal(Value),
    /// `count(type, duration)`: a number.
    Count(String, Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Compare(Operand, Cmp, Operand),
    In(Operand, Vec<Operand>),
    Between(Operand, Operand, Operand),
    StartsWith(Operand, Operand),
    Exists(Vec<String>),
    Happened(String, Option<Duration>),
    Consent(Channel, Purpose),
    /// `in_segment(name)`.
    InSegment(String),
    /// A bare operand: true when it is `true`.
    Truthy(Operand),
}

/// A parse error with the column (1-based, in characters) where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Name(String),
    Str(String),
    Num(f64),
    Op(&'static str),
    Open,
    Close,
    LBracket,
    RBracket,
    Comma,
    Dot,
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |column: usize, message: String| ParseError { column: column + 1, message };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                i += 1;
                continue;
            }
            '(' => out.push((start, Token::Open)),
            ')' => out.push((start, Token::Close)),
            '[' => out.push((start, Token::LBracket)),
            ']' => out.push((start, Token::RBracket)),
            ',' => out.push((start, Token::Comma)),
            '.' if !chars.get(i + 1).is_some_and(char::is_ascii_digit) => out.push((start, Token::Dot)),
            '=' | '!' | '<' | '>' => {
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                let op = match two.as_str() {
                    "==" => "==",
                    "!=" => "!=",
                    "<=" => "<=",
                    ">=" => ">=",
                    _ if c == '<' => "<",
                    _ if c == '>' => ">",
                    _ => return Err(err(start, format!("unexpected `{c}` (comparisons are == != < <= > >=)"))),
                };
                i += op.len();
                out.push((start, Token::Op(op)));
                continue;
            }
            '"' | '\'' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(err(start, "unterminated string".into())),
                        Some('\\') => {
                            if let Some(&next) = chars.get(i + 1) {
                                s.push(next);
                            }
                            i += 2;
                        }
                        Some(&ch) if ch == quote => break,
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push((start, Token::Str(s)));
            }
            c if c.is_ascii_digit() || c == '-' || c == '.' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '.') {
                    j += 1;
                }
                let text: String = chars[i..j].iter().collect();
                // A duration such as `7d` or `90m` is a token of its own kind, read by `happened`.
                if text.ends_with(|ch: char| ch.is_ascii_alphabetic()) && c != '-' {
                    out.push((start, Token::Name(text)));
                } else {
                    let n: f64 = text.parse().map_err(|_| err(start, format!("`{text}` is not a number")))?;
                    out.push((start, Token::Num(n)));
                }
                i = j;
                continue;
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '-') {
                    j += 1;
                }
                out.push((start, Token::Name(chars[i..j].iter().collect())));
                i = j;
                continue;
            }
            other => return Err(err(start, format!("unexpected `{other}`"))),
        }
        i += 1;
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn column(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(c, _)| *c) + 1
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError { column: self.column(), message: message.into() })
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        t
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Name(n)) if n == word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: Token, what: &str) -> Result<(), ParseError> {
        if self.peek() == Some(&token) {
            self.pos += 1;
            Ok(())
        } else {
            self.fail(format!("expected {what}"))
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut terms = vec![self.and()?];
        while self.keyword("or") {
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Expr::Or(terms) })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut terms = vec![self.not()?];
        while self.keyword("and") {
            terms.push(self.not()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Expr::And(terms) })
    }

    fn not(&mut self) -> Result<Expr, ParseError> {
        if self.keyword("not") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.primary()
    }

    fn name(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek() {
            Some(Token::Name(n)) => {
                let n = n.clone();
                self.pos += 1;
                Ok(n)
            }
            _ => self.fail(format!("expected {what}")),
        }
    }

    fn event_type(&mut self, call: &str) -> Result<String, ParseError> {
        match self.next() {
            Some(Token::Name(n)) | Some(Token::Str(n)) => Ok(n),
            _ => {
                self.pos -= 1;
                self.fail(format!("{call} needs an event type"))
            }
        }
    }

    fn duration(&mut self) -> Result<Duration, ParseError> {
        let text = self.name("a duration such as 7d")?;
        match humantime::parse_duration(&text) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => {
                self.pos -= 1;
                self.fail(format!("`{text}` is not a duration (e.g. 30m, 12h, 7d)"))
            }
        }
    }

    fn path(&mut self) -> Result<Vec<String>, ParseError> {
        let mut path = vec![self.name("a path such as event.attributes.plan")?];
        while self.peek() == Some(&Token::Dot) {
            self.pos += 1;
            path.push(self.name("a name after `.`")?);
        }
        if !matches!(path[0].as_str(), "event" | "subject" | "vars" | "profile") {
            self.pos -= path.len() * 2 - 1;
            return self.fail(format!("`{}`: paths start with event, subject, vars or profile", path.join(".")));
        }
        Ok(path)
    }

    fn operand(&mut self) -> Result<Operand, ParseError> {
        match self.peek() {
            Some(Token::Str(s)) => {
                let v = Value::String(s.clone());
                self.pos += 1;
                Ok(Operand::Literal(v))
            }
            Some(Token::Num(n)) => {
                let v = serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number);
                self.pos += 1;
                Ok(Operand::Literal(v))
            }
            Some(Token::Name(n)) if n == "true" || n == "false" || n == "null" => {
                let v = match n.as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => Value::Null,
                };
                self.pos += 1;
                Ok(Operand::Literal(v))
            }
            Some(Token::Name(n)) if n == "count" && matches!(self.tokens.get(self.pos + 1), Some((_, Token::Open))) => {
                self.pos += 2;
                let event_type = self.event_type("count(event_type, duration)")?;
                self.expect(Token::Comma, "`,` and a duration in count(event_type, duration)")?;
                let within = self.duration()?;
                self.expect(Token::Close, "`)` after count(...")?;
                Ok(Operand::Count(event_type, within))
            }
            Some(Token::Name(_)) => Ok(Operand::Path(self.path()?)),
            _ => self.fail("expected a value or a path"),
        }
    }

    fn list(&mut self) -> Result<Vec<Operand>, ParseError> {
        self.expect(Token::LBracket, "`[` to start a list")?;
        let mut items = Vec::new();
        if self.peek() == Some(&Token::RBracket) {
            self.pos += 1;
            return Ok(items);
        }
        loop {
            items.push(self.operand()?);
            match self.next() {
                Some(Token::Comma) => continue,
                Some(Token::RBracket) => return Ok(items),
                _ => {
                    self.pos -= 1;
                    return self.fail("expected `,` or `]` in the list");
                }
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        if self.peek() == Some(&Token::Open) {
            self.pos += 1;
            let e = self.or()?;
            self.expect(Token::Close, "`)`")?;
            return Ok(e);
        }
        let call = |p: &Parser, f: &str| {
            matches!(p.peek(), Some(Token::Name(n)) if n == f)
                && matches!(p.tokens.get(p.pos + 1), Some((_, Token::Open)))
        };
        if call(self, "exists") {
            self.pos += 2;
            let path = self.path()?;
            self.expect(Token::Close, "`)` after exists(path")?;
            return Ok(Expr::Exists(path));
        }
        if call(self, "happened") {
            self.pos += 2;
            let event_type = self.event_type("happened(event_type[, duration])")?;
            let within = if self.peek() == Some(&Token::Comma) {
                self.pos += 1;
                Some(self.duration()?)
            } else {
                None
            };
            self.expect(Token::Close, "`)` after happened(...")?;
            return Ok(Expr::Happened(event_type, within));
        }
        if call(self, "in_segment") {
            self.pos += 2;
            let name = match self.next() {
                Some(Token::Name(n)) | Some(Token::Str(n)) => n,
                _ => {
                    self.pos -= 1;
                    return self.fail("in_segment(name) needs a segment id");
                }
            };
            self.expect(Token::Close, "`)` after in_segment(...")?;
            return Ok(Expr::InSegment(name));
        }
        if call(self, "consent") {
            self.pos += 2;
            let text = self.name("a channel")?;
            let Some(channel) = Channel::parse(&text) else {
                self.pos -= 1;
                return self.fail(format!("`{text}` is not a channel (email, sms, push, webhook)"));
            };
            let purpose = if self.peek() == Some(&Token::Comma) {
                self.pos += 1;
                let text = self.name("a purpose")?;
                let Some(p) = Purpose::parse(&text) else {
                    self.pos -= 1;
                    return self.fail(format!("`{text}` is not a purpose (marketing, transactional)"));
                };
                p
            } else {
                Purpose::Marketing
            };
            self.expect(Token::Close, "`)` after consent(...")?;
            return Ok(Expr::Consent(channel, purpose));
        }
        let left = self.operand()?;
        match self.peek().cloned() {
            Some(Token::Op(op)) => {
                self.pos += 1;
                let cmp = match op {
                    "==" => Cmp::Eq,
                    "!=" => Cmp::Ne,
                    "<" => Cmp::Lt,
                    "<=" => Cmp::Le,
                    ">" => Cmp::Gt,
                    _ => Cmp::Ge,
                };
                Ok(Expr::Compare(left, cmp, self.operand()?))
            }
            Some(Token::Name(n)) if n == "in" => {
                self.pos += 1;
                Ok(Expr::In(left, self.list()?))
            }
            Some(Token::Name(n))
                if n == "not" && matches!(self.tokens.get(self.pos + 1), Some((_, Token::Name(m))) if m == "in") =>
            {
                self.pos += 2;
                Ok(Expr::Not(Box::new(Expr::In(left, self.list()?))))
            }
            Some(Token::Name(n)) if n == "between" => {
                self.pos += 1;
                let low = self.operand()?;
                if !self.keyword("and") {
                    return self.fail("expected `and` in `between low and high`");
                }
                Ok(Expr::Between(left, low, self.operand()?))
            }
            Some(Token::Name(n)) if n == "starts_with" => {
                self.pos += 1;
                Ok(Expr::StartsWith(left, self.operand()?))
            }
            _ => Ok(Expr::Truthy(left)),
        }
    }
}

impl Expr {
    /// Parses a predicate. Errors carry the column.
    pub fn parse(text: &str) -> Result<Expr, ParseError> {
        let tokens = tokenize(text)?;
        if tokens.is_empty() {
            return Err(ParseError { column: 1, message: "empty expression".into() });
        }
        let mut parser = Parser { tokens, pos: 0, end: text.chars().count() };
        let expr = parser.or()?;
        if parser.pos < parser.tokens.len() {
            return parser.fail("unexpected text after the expression (missing `and`/`or`?)");
        }
        Ok(expr)
    }

    pub fn eval(&self, ctx: &dyn Context) -> bool {
        match self {
            Expr::And(terms) => terms.iter().all(|t| t.eval(ctx)),
            Expr::Or(terms) => terms.iter().any(|t| t.eval(ctx)),
            Expr::Not(e) => !e.eval(ctx),
            Expr::Compare(a, cmp, b) => compare(&resolve(a, ctx), *cmp, &resolve(b, ctx)),
            Expr::In(a, list) => {
                let v = resolve(a, ctx);
                list.iter().any(|item| compare(&v, Cmp::Eq, &resolve(item, ctx)))
            }
            Expr::Between(a, low, high) => {
                let v = resolve(a, ctx);
                compare(&v, Cmp::Ge, &resolve(low, ctx)) && compare(&v, Cmp::Le, &resolve(high, ctx))
            }
            Expr::StartsWith(a, prefix) => match (resolve(a, ctx), resolve(prefix, ctx)) {
                (Value::String(s), Value::String(p)) => s.starts_with(&p),
                _ => false,
            },
            Expr::Exists(path) => ctx.value(path).is_some_and(|v| !v.is_null()),
            Expr::Happened(event_type, within) => ctx.happened(event_type, *within),
            Expr::Consent(channel, purpose) => ctx.consent(*channel, *purpose),
            Expr::InSegment(name) => ctx.in_segment(name),
            Expr::Truthy(a) => resolve(a, ctx) == Value::Bool(true),
        }
    }

    /// Every path the expression reads.
    pub fn paths<'a>(&'a self, out: &mut Vec<&'a [String]>) {
        let operand = |o: &'a Operand, out: &mut Vec<&'a [String]>| {
            if let Operand::Path(p) = o {
                out.push(p.as_slice());
            }
        };
        match self {
            Expr::And(t) | Expr::Or(t) => t.iter().for_each(|e| e.paths(out)),
            Expr::Not(e) => e.paths(out),
            Expr::Compare(a, _, b) | Expr::StartsWith(a, b) => {
                operand(a, out);
                operand(b, out);
            }
            Expr::In(a, list) => {
                operand(a, out);
                list.iter().for_each(|o| operand(o, out));
            }
            Expr::Between(a, b, c) => {
                operand(a, out);
                operand(b, out);
                operand(c, out);
            }
            Expr::Truthy(a) => operand(a, out),
            Expr::Exists(p) => out.push(p.as_slice()),
            Expr::Happened(..) | Expr::Consent(..) | Expr::InSegment(..) => {}
        }
    }

    /// Event types that `happened(...)` and `count(...)` ask about (the subject's history keeps them).
    pub fn happened_types(&self, out: &mut Vec<String>) {
        self.visit_history(&mut |t, _| out.push(t.to_string()));
    }

    /// Every window the expression counts or checks in: (event type, duration) of `happened(t, d)` and
    /// `count(t, d)`.
    pub fn windows(&self, out: &mut Vec<(String, Duration)>) {
        self.visit_history(&mut |t, d| {
            if let Some(d) = d {
                out.push((t.to_string(), d));
            }
        });
    }

    /// Calls `f` with each `happened(type[, duration])` and `count(type, duration)`, in order.
    fn visit_history(&self, f: &mut dyn FnMut(&str, Option<Duration>)) {
        let operand = |o: &Operand, f: &mut dyn FnMut(&str, Option<Duration>)| {
            if let Operand::Count(t, d) = o {
                f(t, Some(*d));
            }
        };
        match self {
            Expr::And(t) | Expr::Or(t) => t.iter().for_each(|e| e.visit_history(f)),
            Expr::Not(e) => e.visit_history(f),
            Expr::Happened(t, d) => f(t, *d),
            Expr::Compare(a, _, b) | Expr::StartsWith(a, b) => {
                operand(a, f);
                operand(b, f);
            }
            Expr::In(a, list) => {
                operand(a, f);
                list.iter().for_each(|o| operand(o, f));
            }
            Expr::Between(a, b, c) => [a, b, c].into_iter().for_each(|o| operand(o, f)),
            Expr::Truthy(a) => operand(a, f),
            _ => {}
        }
    }

    /// Segments `in_segment(...)` asks about.
    pub fn segments(&self, out: &mut Vec<String>) {
        match self {
            Expr::And(t) | Expr::Or(t) => t.iter().for_each(|e| e.segments(out)),
            Expr::Not(e) => e.segments(out),
            Expr::InSegment(s) => out.push(s.clone()),
            _ => {}
        }
    }
}

fn resolve(operand: &Operand, ctx: &dyn Context) -> Value {
    match operand {
        Operand::Literal(v) => v.clone(),
        Operand::Path(p) => ctx.value(p).unwrap_or(Value::Null),
        Operand::Count(t, within) => Value::from(ctx.count(t, *within)),
    }
}

fn compare(a: &Value, cmp: Cmp, b: &Value) -> bool {
    use std::cmp::Ordering;
    let ordering = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64().zip(y.as_f64()).and_then(|(x, y)| x.partial_cmp(&y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    };
    match (cmp, ordering) {
        (Cmp::Eq, o) => o == Some(Ordering::Equal),
        (Cmp::Ne, o) => o != Some(Ordering::Equal),
        (_, None) => false,
        (_, Some(_)) if a.is_null() => false,
        (Cmp::Lt, Some(o)) => o == Ordering::Less,
        (Cmp::Le, Some(o)) => o != Ordering::Greater,
        (Cmp::Gt, Some(o)) => o == Ordering::Greater,
        (Cmp::Ge, Some(o)) => o != Ordering::Less,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Ctx {
        event: Value,
        seen: Vec<(&'static str, u64)>,
        email_consent: bool,
    }

    impl Context for Ctx {
        fn value(&self, path: &[String]) -> Option<Value> {
            let mut v = match path.first()?.as_str() {
                "event" => &self.event,
                _ => return None,
            };
            for key in &path[1..] {
                v = v.get(key)?;
            }
            Some(v.clone())
        }
        fn happened(&self, event_type: &str, within: Option<Duration>) -> bool {
            self.seen.iter().any(|(t, ago_s)| *t == event_type && within.is_none_or(|w| *ago_s <= w.as_secs()))
        }
        fn consent(&self, channel: Channel, _purpose: Purpose) -> bool {
            channel == Channel::Email && self.email_consent
        }
    }

    fn ctx() -> Ctx {
        Ctx {
            event: json!({"type": "cart_updated", "attributes": {"plan": "pro", "amount": 120.5, "email": "ann@example.com",
                          "items": 3, "vip": true}}),
            seen: vec![("email_opened", 3600), ("order_completed", 10 * 86_400)],
            email_consent: true,
        }
    }

    fn eval(text: &str) -> bool {
        Expr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}")).eval(&ctx())
    }

    #[test]
    fn comparisons_on_numbers_and_strings() {
        assert!(eval("event.attributes.amount > 100"));
        assert!(eval("event.attributes.amount >= 120.5 and event.attributes.amount <= 120.5"));
        assert!(!eval("event.attributes.amount < 100"));
        assert!(eval("event.attributes.plan == 'pro'"));
        assert!(eval("event.attributes.plan != \"free\""));
        assert!(eval("event.attributes.items == 3"));
        assert!(!eval("event.attributes.plan > 3"), "a string and a number do not compare");
    }

    #[test]
    fn membership_ranges_prefixes_and_existence() {
        assert!(eval("event.attributes.plan in ['pro', 'enterprise']"));
        assert!(eval("event.attributes.plan not in ['free']"));
        assert!(!eval("event.attributes.plan in []"));
        assert!(eval("event.attributes.amount between 100 and 200"));
        assert!(!eval("event.attributes.amount between 0 and 100"));
        assert!(eval("event.attributes.email starts_with 'ann@'"));
        assert!(eval("exists(event.attributes.plan)"));
        assert!(!eval("exists(event.attributes.coupon)"));
        assert!(eval("event.attributes.vip"), "a bare boolean path");
    }

    #[test]
    fn missing_values_are_null_and_fail_ordering_comparisons() {
        assert!(eval("event.attributes.coupon == null"));
        assert!(!eval("event.attributes.coupon > 0"));
        assert!(!eval("event.attributes.coupon < 0"));
        assert!(eval("event.attributes.coupon != 'x'"));
    }

    #[test]
    fn boolean_logic_and_precedence() {
        // `and` binds tighter than `or`.
        assert!(eval("event.attributes.plan == 'free' and event.attributes.items == 9 or event.attributes.vip"));
        assert!(!eval("event.attributes.plan == 'free' and (event.attributes.items == 9 or event.attributes.vip)"));
        assert!(eval("not event.attributes.plan == 'free'"));
        assert!(eval("not not event.attributes.vip"));
    }

    #[test]
    fn history_and_consent() {
        assert!(eval("happened(email_opened, 2h)"));
        assert!(!eval("happened(email_opened, 30m)"));
        assert!(eval("happened(order_completed)"));
        assert!(!eval("happened(order_completed, 7d)"));
        assert!(eval("consent(email)"));
        assert!(!eval("consent(sms, marketing)"));
        let mut types = Vec::new();
        Expr::parse("happened(a) or not happened('b', 1d)").expect("parse").happened_types(&mut types);
        assert_eq!(types, vec!["a", "b"]);
    }

    #[test]
    fn counts_and_segments_read_from_the_context() {
        // The test context counts its `seen` list; `in_segment` is the default (no segments).
        struct Counting(Ctx);
        impl Context for Counting {
            fn value(&self, path: &[String]) -> Option<Value> {
                self.0.value(path)
            }
            fn happened(&self, t: &str, within: Option<Duration>) -> bool {
                self.0.happened(t, within)
            }
            fn consent(&self, c: Channel, p: Purpose) -> bool {
                self.0.consent(c, p)
            }
            fn count(&self, t: &str, within: Duration) -> u64 {
                self.0.seen.iter().filter(|(s, ago)| *s == t && *ago <= within.as_secs()).count() as u64
            }
        }
        let ctx = Counting(ctx());
        let holds = |text: &str| Expr::parse(text).expect(text).eval(&ctx);
        assert!(holds("count(order_completed, 30d) >= 1"));
        assert!(!holds("count(order_completed, 7d) >= 1"));
        assert!(holds("count(email_opened, 2h) == 1 and not in_segment(vip)"));
        let mut windows = Vec::new();
        Expr::parse("count(a, 1d) > 2 or happened(b, 2h) or happened(c)").unwrap().windows(&mut windows);
        assert_eq!(
            windows,
            vec![("a".to_string(), Duration::from_secs(86_400)), ("b".into(), Duration::from_secs(7_200))]
        );
    }

    #[test]
    fn errors_say_where_and_what() {
        let err = |text: &str| Expr::parse(text).expect_err(text);
        assert_eq!(err("event.attributes.plan = 'x'").column, 23);
        assert!(err("event.attributes.plan == 'x").message.contains("unterminated"));
        assert!(err("plan == 'x'").message.contains("paths start with event, subject, vars or profile"));
        assert!(err("count(order_completed) > 1").message.contains("`,` and a duration"));
        assert!(err("in_segment()").message.contains("needs a segment id"));
        assert!(err("happened(email_opened, soon)").message.contains("not a duration"));
        assert!(err("consent(pigeon)").message.contains("not a channel"));
        assert!(err("event.type == 'a' event.type == 'b'").message.contains("missing `and`/`or`"));
        assert!(err("event.x between 1 2").message.contains("expected `and`"));
        assert!(err("").message.contains("empty"));
        assert!(err("(event.vip").message.contains("`)`"));
        assert!(err("event.x in [1, 2").message.contains("`,` or `]`"));
    }
}
