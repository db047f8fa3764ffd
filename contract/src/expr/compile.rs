//! Compiles a parsed CEL expression into a tree of closures.
//!
//! The forms record logic is made of (fields, comparisons, arithmetic, logic, string functions,
//! literals) become closures that work on borrowed values: evaluating `value.page != ''` touches
//! no allocator. Anything else (macros such as `exists`, timestamps, regexes) runs in the `cel`
//! crate's interpreter, for that subtree only.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use cel::common::ast::{operators as op, CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue};

use super::{EvalError, Var, Vars};
use crate::value::{from_cel, num, to_cel, Num, Val};

pub(crate) type Out<'s> = Result<Cow<'s, Val>, EvalError>;
pub(crate) type Node = Box<dyn for<'s> Fn(&'s dyn Vars) -> Out<'s> + Send + Sync>;

fn node<F>(f: F) -> Node
where
    F: for<'s> Fn(&'s dyn Vars) -> Out<'s> + Send + Sync + 'static,
{
    Box::new(f)
}

fn err<T>(msg: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError(msg.into()))
}

/// Compiles with the given environment for interpreted subtrees; counts them in `interpreted`.
pub(crate) struct Compiler {
    pub env: Arc<cel::Env>,
    pub interpreted: usize,
}

impl Compiler {
    pub fn compile(&mut self, e: &IdedExpr) -> Node {
        match &e.expr {
            Expr::Literal(l) => {
                let v = literal(l);
                node(move |_| Ok(Cow::Owned(v.clone())))
            }
            Expr::Ident(name) => match Var::from_name(name) {
                Some(var) => node(move |vars| {
                    vars.var(var)
                        .ok_or_else(|| EvalError(format!("{} is not set here", var.name())))
                }),
                None => self.interpret(e),
            },
            Expr::Select(s) => {
                let operand = self.compile(&s.operand);
                let field: Arc<str> = Arc::from(s.field.as_str());
                if s.test {
                    node(move |vars| {
                        let o = operand(vars)?;
                        match &*o {
                            Val::Map(_) => Ok(Cow::Owned(Val::Bool(o.field(&field).is_some()))),
                            other => err(format!("has() needs a map, got {}", other.type_name())),
                        }
                    })
                } else {
                    node(move |vars| select(operand(vars)?, &field))
                }
            }
            Expr::List(l) if l.optional_indices.is_empty() => {
                let items: Vec<Node> = l.elements.iter().map(|x| self.compile(x)).collect();
                node(move |vars| {
                    let mut out = Vec::with_capacity(items.len());
                    for i in &items {
                        out.push(i(vars)?.into_owned());
                    }
                    Ok(Cow::Owned(Val::List(Arc::new(out))))
                })
            }
            Expr::Map(m) => {
                let mut entries = Vec::new();
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) if !me.optional => {
                            entries.push((self.compile(&me.key), self.compile(&me.value)));
                        }
                        _ => return self.interpret(e),
                    }
                }
                node(move |vars| {
                    let mut out: Vec<(Arc<str>, Val)> = Vec::with_capacity(entries.len());
                    for (k, v) in &entries {
                        let key = match &*k(vars)? {
                            Val::Str(s) => s.clone(),
                            other => {
                                return err(format!(
                                    "map keys here are strings, got {}",
                                    other.type_name()
                                ))
                            }
                        };
                        if out.iter().any(|(existing, _)| *existing == key) {
                            return err(format!("map literal repeats the key {key:?}"));
                        }
                        out.push((key, v(vars)?.into_owned()));
                    }
                    Ok(Cow::Owned(Val::Map(Arc::new(out))))
                })
            }
            Expr::Call(c) => self.call(e, c),
            _ => self.interpret(e),
        }
    }

    fn call(&mut self, whole: &IdedExpr, c: &CallExpr) -> Node {
        let name = c.func_name.as_str();
        match (c.target.as_deref(), c.args.as_slice()) {
            (None, [a, b]) if name == op::LOGICAL_AND || name == op::LOGICAL_OR => {
                let (a, b) = (self.compile(a), self.compile(b));
                let is_and = name == op::LOGICAL_AND;
                // CEL's commutative logic: a decisive operand wins over an error in the other.
                node(move |vars| {
                    let l = truth(a(vars));
                    if l == Ok(!is_and) {
                        return Ok(Cow::Owned(Val::Bool(!is_and)));
                    }
                    let r = truth(b(vars));
                    match (l, r) {
                        (_, Ok(v)) if v != is_and => Ok(Cow::Owned(Val::Bool(v))),
                        (Ok(_), Ok(v)) => Ok(Cow::Owned(Val::Bool(v))),
                        (Err(e), _) | (_, Err(e)) => Err(e),
                    }
                })
            }
            (None, [a]) if name == op::LOGICAL_NOT => {
                let a = self.compile(a);
                node(move |vars| Ok(Cow::Owned(Val::Bool(!truth(a(vars))?))))
            }
            (None, [a]) if name == op::NEGATE => {
                let a = self.compile(a);
                node(move |vars| match &*a(vars)? {
                    Val::Int(i) => i
                        .checked_neg()
                        .map(|v| Cow::Owned(Val::Int(v)))
                        .ok_or_else(|| EvalError("integer overflow in negation".into())),
                    Val::Float(f) => Ok(Cow::Owned(Val::Float(-f))),
                    other => err(format!("cannot negate {}", other.type_name())),
                })
            }
            (None, [c0, t, f]) if name == op::CONDITIONAL => {
                let (c0, t, f) = (self.compile(c0), self.compile(t), self.compile(f));
                node(move |vars| if truth(c0(vars))? { t(vars) } else { f(vars) })
            }
            (None, [a, b]) if name == op::EQUALS || name == op::NOT_EQUALS => {
                let (a, b) = (self.compile(a), self.compile(b));
                let want = name == op::EQUALS;
                node(move |vars| Ok(Cow::Owned(Val::Bool((*a(vars)? == *b(vars)?) == want))))
            }
            (None, [a, b])
                if [op::LESS, op::LESS_EQUALS, op::GREATER, op::GREATER_EQUALS].contains(&name) =>
            {
                let (a, b) = (self.compile(a), self.compile(b));
                let accept: fn(Ordering) -> bool = match name {
                    n if n == op::LESS => Ordering::is_lt,
                    n if n == op::LESS_EQUALS => Ordering::is_le,
                    n if n == op::GREATER => Ordering::is_gt,
                    _ => Ordering::is_ge,
                };
                node(move |vars| {
                    let (x, y) = (a(vars)?, b(vars)?);
                    Ok(Cow::Owned(Val::Bool(accept(compare(&x, &y)?))))
                })
            }
            (None, [a, b])
                if [op::ADD, op::SUBSTRACT, op::MULTIPLY, op::DIVIDE, op::MODULO]
                    .contains(&name) =>
            {
                let (a, b) = (self.compile(a), self.compile(b));
                let o = name.as_bytes()[1];
                node(move |vars| arith(o, &*a(vars)?, &*b(vars)?).map(Cow::Owned))
            }
            (None, [a, i]) if name == op::INDEX => {
                let (a, i) = (self.compile(a), self.compile(i));
                node(move |vars| {
                    let container = a(vars)?;
                    let idx = i(vars)?;
                    index(container, &idx)
                })
            }
            (None, [x, container]) if name == op::IN => {
                let (x, container) = (self.compile(x), self.compile(container));
                node(move |vars| {
                    let x = x(vars)?;
                    Ok(Cow::Owned(Val::Bool(match &*container(vars)? {
                        Val::List(l) => l.contains(&x),
                        Val::Map(m) => match &*x {
                            Val::Str(k) => m.iter().any(|(name, _)| name == k),
                            _ => false,
                        },
                        other => {
                            return err(format!(
                                "'in' needs a list or map, got {}",
                                other.type_name()
                            ))
                        }
                    })))
                })
            }
            (None, [a]) if name == "size" => self.unary(a, size),
            (Some(t), []) if name == "size" => self.unary(t, size),
            (None, [a]) if name == "int" => self.unary(a, to_int),
            (None, [a]) if name == "double" => self.unary(a, to_double),
            (None, [a]) if name == "string" => self.unary(a, to_string),
            (Some(t), []) if name == "lowerAscii" => {
                self.unary(t, |v| map_str(v, |s| Val::str(&s.to_ascii_lowercase())))
            }
            (Some(t), []) if name == "upperAscii" => {
                self.unary(t, |v| map_str(v, |s| Val::str(&s.to_ascii_uppercase())))
            }
            (Some(t), []) if name == "trim" => {
                self.unary(t, |v| map_str(v, |s| Val::str(s.trim())))
            }
            (Some(t), [a]) if ["contains", "startsWith", "endsWith", "split"].contains(&name) => {
                let (t, a) = (self.compile(t), self.compile(a));
                let f: fn(&str, &str) -> Val = match name {
                    "contains" => |s, x| Val::Bool(s.contains(x)),
                    "startsWith" => |s, x| Val::Bool(s.starts_with(x)),
                    "endsWith" => |s, x| Val::Bool(s.ends_with(x)),
                    _ => |s, x| {
                        Val::List(Arc::new(if x.is_empty() {
                            s.chars()
                                .map(|c| Val::str(c.encode_utf8(&mut [0; 4])))
                                .collect()
                        } else {
                            s.split(x).map(Val::str).collect()
                        }))
                    },
                };
                let fname = name.to_string();
                node(move |vars| match (&*t(vars)?, &*a(vars)?) {
                    (Val::Str(s), Val::Str(x)) => Ok(Cow::Owned(f(s, x))),
                    (s, x) => err(format!(
                        "{fname} needs strings, got {} and {}",
                        s.type_name(),
                        x.type_name()
                    )),
                })
            }
            // The interpreter's versions of these search naively (O(n·m) for `indexOf`) or
            // build strings of any size (`replace`, `join`): hostile records must not make them
            // hang or exhaust memory, so they run here, linear and size-checked.
            (Some(t), args) if name == "replace" && (args.len() == 2 || args.len() == 3) => {
                let t = self.compile(t);
                let args: Vec<Node> = args.iter().map(|a| self.compile(a)).collect();
                node(move |vars| {
                    let s = t(vars)?;
                    let vals = args
                        .iter()
                        .map(|a| a(vars))
                        .collect::<Result<Vec<_>, _>>()?;
                    match (
                        &*s,
                        vals.iter().map(|v| &**v).collect::<Vec<_>>().as_slice(),
                    ) {
                        (Val::Str(s), [Val::Str(from), Val::Str(to)]) => replace(s, from, to, None),
                        (Val::Str(s), [Val::Str(from), Val::Str(to), Val::Int(n)]) => {
                            replace(s, from, to, usize::try_from(*n).ok())
                        }
                        _ => err(
                            "replace needs (string, string) or (string, string, int) on a string",
                        ),
                    }
                    .map(Cow::Owned)
                })
            }
            (Some(t), args) if name == "join" && args.len() <= 1 => {
                let t = self.compile(t);
                let sep = args.first().map(|a| self.compile(a));
                node(move |vars| {
                    let list = t(vars)?;
                    let sep = match &sep {
                        Some(sep) => sep(vars)?,
                        None => Cow::Owned(Val::str("")),
                    };
                    join(&list, &sep).map(Cow::Owned)
                })
            }
            (Some(t), args)
                if (name == "indexOf" || name == "lastIndexOf")
                    && (args.len() == 1 || args.len() == 2) =>
            {
                let t = self.compile(t);
                let args: Vec<Node> = args.iter().map(|a| self.compile(a)).collect();
                let last = name == "lastIndexOf";
                node(move |vars| {
                    let s = t(vars)?;
                    let vals = args
                        .iter()
                        .map(|a| a(vars))
                        .collect::<Result<Vec<_>, _>>()?;
                    match (
                        &*s,
                        vals.iter().map(|v| &**v).collect::<Vec<_>>().as_slice(),
                    ) {
                        (Val::Str(s), [Val::Str(n)]) => index_of(s, n, None, last),
                        (Val::Str(s), [Val::Str(n), Val::Int(o)]) => index_of(s, n, Some(*o), last),
                        _ => err("indexOf needs (string) or (string, int) on a string"),
                    }
                    .map(Cow::Owned)
                })
            }
            _ => self.interpret(whole),
        }
    }

    fn unary(&mut self, a: &IdedExpr, f: fn(&Val) -> Result<Val, EvalError>) -> Node {
        let a = self.compile(a);
        node(move |vars| f(&*a(vars)?).map(Cow::Owned))
    }

    /// A subtree the closures do not cover: evaluated by the interpreter with the record's
    /// variables it names.
    pub(super) fn interpret(&mut self, e: &IdedExpr) -> Node {
        self.interpreted += 1;
        let expr = e.clone();
        let env = self.env.clone();
        let refs: Vec<Var> = super::free_vars(e)
            .into_iter()
            .filter_map(Var::from_name)
            .collect();
        node(move |vars| {
            let mut ctx = cel::Context::with_env(env.clone());
            for v in &refs {
                if let Some(val) = vars.var(*v) {
                    ctx.add_variable_from_value(v.name(), to_cel(&val));
                }
            }
            let out = cel::Value::resolve(&expr, &ctx).map_err(|e| EvalError(e.to_string()))?;
            from_cel(&out).map(Cow::Owned).map_err(EvalError)
        })
    }
}

fn literal(l: &LiteralValue) -> Val {
    match l {
        LiteralValue::Boolean(b) => Val::Bool(*b.inner()),
        LiteralValue::Bytes(b) => Val::Bytes(Arc::from(b.inner())),
        LiteralValue::Double(d) => Val::Float(*d.inner()),
        LiteralValue::Int(i) => Val::Int(*i.inner()),
        LiteralValue::Null => Val::Null,
        LiteralValue::String(s) => Val::str(s.inner()),
        LiteralValue::UInt(u) => Val::UInt(*u.inner()),
    }
}

fn truth(v: Out<'_>) -> Result<bool, EvalError> {
    match &*v? {
        Val::Bool(b) => Ok(*b),
        other => err(format!("expected a bool, got {}", other.type_name())),
    }
}

fn select<'s>(operand: Cow<'s, Val>, field: &str) -> Out<'s> {
    match operand {
        Cow::Borrowed(v) => match v.field(field) {
            Some(f) => Ok(Cow::Borrowed(f)),
            None => missing(v, field),
        },
        Cow::Owned(v) => match v.field(field) {
            Some(f) => Ok(Cow::Owned(f.clone())),
            None => missing(&v, field),
        },
    }
}

fn missing<T>(v: &Val, field: &str) -> Result<T, EvalError> {
    match v {
        Val::Map(_) => err(format!("no such key: {field}")),
        other => err(format!(
            "cannot select field {field} from {}",
            other.type_name()
        )),
    }
}

fn index<'s>(container: Cow<'s, Val>, idx: &Val) -> Out<'s> {
    let pick = |c: &Val| -> Result<Option<usize>, EvalError> {
        match (c, idx) {
            (Val::List(l), i) => {
                let n = match num(i) {
                    Some(Num::I(n)) => n,
                    Some(Num::U(n)) => i64::try_from(n).unwrap_or(i64::MAX),
                    Some(Num::F(f)) if f.fract() == 0.0 => f as i64,
                    _ => return err(format!("a list index is an int, got {}", i.type_name())),
                };
                usize::try_from(n)
                    .ok()
                    .filter(|n| *n < l.len())
                    .map(Some)
                    .ok_or_else(|| {
                        EvalError(format!("index {n} out of range for a list of {}", l.len()))
                    })
            }
            (Val::Map(m), Val::Str(k)) => m
                .iter()
                .position(|(name, _)| name == k)
                .map(Some)
                .ok_or_else(|| EvalError(format!("no such key: {k}"))),
            (c, i) => err(format!(
                "cannot index {} with {}",
                c.type_name(),
                i.type_name()
            )),
        }
    };
    let at = |c: &Val, i: usize| -> Val {
        match c {
            Val::List(l) => l[i].clone(),
            Val::Map(m) => m[i].1.clone(),
            _ => Val::Null,
        }
    };
    match container {
        Cow::Borrowed(c) => match (pick(c)?, c) {
            (Some(i), Val::List(l)) => Ok(Cow::Borrowed(&l[i])),
            (Some(i), Val::Map(m)) => Ok(Cow::Borrowed(&m[i].1)),
            _ => err("cannot index"),
        },
        Cow::Owned(c) => {
            let i = pick(&c)?.unwrap_or(0);
            Ok(Cow::Owned(at(&c, i)))
        }
    }
}

pub fn compare(a: &Val, b: &Val) -> Result<Ordering, EvalError> {
    let o = match (a, b) {
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        (Val::Bytes(x), Val::Bytes(y)) => Some(x.cmp(y)),
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        (x, y) => match (num(x), num(y)) {
            (Some(p), Some(q)) => p.cmp_num(q),
            _ => None,
        },
    };
    o.ok_or_else(|| {
        EvalError(format!(
            "cannot compare {} with {}",
            a.type_name(),
            b.type_name()
        ))
    })
}

/// Integer arithmetic on one integer type: `None` on overflow, an error on division by zero.
macro_rules! checked {
    ($o:expr, $x:expr, $y:expr) => {{
        let (x, y) = ($x, $y);
        match $o {
            b'/' | b'%' if y == 0 => err(if $o == b'/' {
                "division by zero"
            } else {
                "modulus by zero"
            }),
            b'+' => Ok(x.checked_add(y)),
            b'-' => Ok(x.checked_sub(y)),
            b'*' => Ok(x.checked_mul(y)),
            b'/' => Ok(x.checked_div(y)),
            _ => Ok(x.checked_rem(y)),
        }
    }};
}

/// Arithmetic; `o` is the operator's character. Mixed int and double promote to double, since
/// JSON numbers arrive as int or double depending on how a producer wrote them.
pub(crate) fn arith(o: u8, a: &Val, b: &Val) -> Result<Val, EvalError> {
    let overflow = || EvalError(format!("integer overflow in {} {} {}", a, o as char, b));
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => checked!(o, *x, *y)?.map(Val::Int).ok_or_else(overflow),
        (Val::UInt(x), Val::UInt(y)) => checked!(o, *x, *y)?.map(Val::UInt).ok_or_else(overflow),
        (Val::Str(x), Val::Str(y)) if o == b'+' => {
            too_big(x.len().saturating_add(y.len()), "string")?;
            let mut s = String::with_capacity(x.len() + y.len());
            s.push_str(x);
            s.push_str(y);
            Ok(Val::Str(Arc::from(s)))
        }
        (Val::List(x), Val::List(y)) if o == b'+' => {
            too_big(x.len().saturating_add(y.len()), "list")?;
            Ok(Val::List(Arc::new(
                x.iter().chain(y.iter()).cloned().collect(),
            )))
        }
        (x, y) => match (num(x), num(y)) {
            (Some(p), Some(q)) if o != b'%' => {
                let (p, q) = (p.as_f64(), q.as_f64());
                // IEEE would give inf or NaN, which JSON cannot hold (they came out as the
                // string "inf"): a record error, as integer division by zero is.
                if o == b'/' && q == 0.0 {
                    return err("division by zero");
                }
                let r = match o {
                    b'+' => p + q,
                    b'-' => p - q,
                    b'*' => p * q,
                    _ => p / q,
                };
                if r.is_finite() {
                    Ok(Val::Float(r))
                } else {
                    err(format!("{} {} {} overflows a double", a, o as char, b))
                }
            }
            _ => err(format!(
                "no operator {} for {} and {}",
                o as char,
                x.type_name(),
                y.type_name()
            )),
        },
    }
}

/// CEL's `replace`: all occurrences, or the first `n`.
fn replace(s: &str, from: &str, to: &str, n: Option<usize>) -> Result<Val, EvalError> {
    // An empty `from` matches at every character boundary, as in Go's strings.Replace.
    let found = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from).count()
    };
    let count = n.map_or(found, |n| n.min(found));
    let len = (s.len() - count * from.len()).saturating_add(count.saturating_mul(to.len()));
    too_big(len, "string")?;
    Ok(Val::str(&match n {
        Some(n) => s.replacen(from, to, n),
        None => s.replace(from, to),
    }))
}

fn join(list: &Val, sep: &Val) -> Result<Val, EvalError> {
    let (Val::List(items), Val::Str(sep)) = (list, sep) else {
        return err(format!(
            "join needs a list and a string, got {} and {}",
            list.type_name(),
            sep.type_name()
        ));
    };
    let mut len = sep.len().saturating_mul(items.len().saturating_sub(1));
    for i in items.iter() {
        match i {
            Val::Str(x) => len = len.saturating_add(x.len()),
            other => return err(format!("join needs strings, got {}", other.type_name())),
        }
    }
    too_big(len, "string")?;
    let mut out = String::with_capacity(len);
    for (k, i) in items.iter().enumerate() {
        if k > 0 {
            out.push_str(sep);
        }
        if let Val::Str(x) = i {
            out.push_str(x);
        }
    }
    Ok(Val::Str(Arc::from(out)))
}

/// CEL's `indexOf` and `lastIndexOf`, in code points, with the standard library's linear
/// substring search. `offset`: where `indexOf` starts, or the last start `lastIndexOf` takes.
fn index_of(s: &str, needle: &str, offset: Option<i64>, last: bool) -> Result<Val, EvalError> {
    let chars = s.chars().count();
    let fname = if last { "lastIndexOf" } else { "indexOf" };
    let off = match offset {
        None if last => chars,
        None => 0,
        Some(o) => match usize::try_from(o).ok().filter(|o| *o <= chars) {
            Some(o) => o,
            None => return err(format!("{fname}: index out of range: {o}")),
        },
    };
    let byte_at = |c: usize| s.char_indices().nth(c).map_or(s.len(), |(b, _)| b);
    let to_chars = |b: usize| s[..b].chars().count();
    let found = if last {
        if needle.is_empty() {
            return Ok(Val::Int(off as i64));
        }
        let end = byte_at(off.saturating_add(needle.chars().count()));
        s[..end].rfind(needle).map(to_chars)
    } else {
        if needle.is_empty() {
            return Ok(Val::Int(off as i64));
        }
        let start = byte_at(off);
        s[start..].find(needle).map(|b| to_chars(start + b))
    };
    Ok(Val::Int(found.map_or(-1, |i| i as i64)))
}

/// Refuses to build a value bigger than a record: a chain of `+` over a large field would
/// otherwise multiply it.
fn too_big(len: usize, what: &str) -> Result<(), EvalError> {
    if len > super::MAX_VALUE_BYTES {
        return err(format!(
            "the {what} would have {len} bytes or elements, more than the limit of {}; \
             build smaller values",
            super::MAX_VALUE_BYTES
        ));
    }
    Ok(())
}

fn size(v: &Val) -> Result<Val, EvalError> {
    let n = match v {
        Val::Str(s) => s.chars().count(),
        Val::Bytes(b) => b.len(),
        Val::List(l) => l.len(),
        Val::Map(m) => m.len(),
        other => return err(format!("size() of {}", other.type_name())),
    };
    Ok(Val::Int(i64::try_from(n).unwrap_or(i64::MAX)))
}

fn to_int(v: &Val) -> Result<Val, EvalError> {
    match v {
        Val::Int(i) => Ok(Val::Int(*i)),
        Val::UInt(u) => i64::try_from(*u)
            .map(Val::Int)
            .map_err(|_| EvalError("int() overflow".into())),
        Val::Float(f) if f.is_finite() && f.abs() < 9.2e18 => Ok(Val::Int(f.trunc() as i64)),
        Val::Str(s) => s
            .trim()
            .parse()
            .map(Val::Int)
            .map_err(|_| EvalError(format!("int() cannot parse {s:?}"))),
        other => err(format!("int() of {}", other.type_name())),
    }
}

fn to_double(v: &Val) -> Result<Val, EvalError> {
    match v {
        Val::Str(s) => s
            .trim()
            .parse()
            .map(Val::Float)
            .map_err(|_| EvalError(format!("double() cannot parse {s:?}"))),
        other => num(other)
            .map(|n| Val::Float(n.as_f64()))
            .ok_or_else(|| EvalError(format!("double() of {}", other.type_name()))),
    }
}

fn to_string(v: &Val) -> Result<Val, EvalError> {
    match v {
        Val::Str(_) => Ok(v.clone()),
        Val::Bytes(b) => std::str::from_utf8(b)
            .map(Val::str)
            .map_err(|_| EvalError("string() of bytes that are not UTF-8".into())),
        Val::Int(_) | Val::UInt(_) | Val::Float(_) | Val::Bool(_) => Ok(Val::str(&v.to_string())),
        other => err(format!("string() of {}", other.type_name())),
    }
}

fn map_str(v: &Val, f: impl Fn(&str) -> Val) -> Result<Val, EvalError> {
    match v {
        Val::Str(s) => Ok(f(s)),
        other => err(format!("expected a string, got {}", other.type_name())),
    }
}
