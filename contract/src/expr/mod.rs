//! CEL record logic: parsed and checked at load, compiled to closures for the hot path.
//!
//! A record is seen as `key`, `value`, `partition`, `offset`, `timestamp` (ms), `headers` and
//! `topic`; after a `flatMap`, `item`; keyed steps see `key`, `values` and `state`; a reduce sees
//! `a` and `b`. An expression that names anything else, or does not parse, is refused at load
//! with its line and column.

mod compile;

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{Expr, IdedExpr};
use cel::parser::Parser;

pub use crate::value::Val;
pub use compile::compare;

/// Deepest nesting an expression may have; deeper input is refused at load, not at run time.
pub const MAX_DEPTH: u16 = 64;
/// Longest expression source accepted.
pub const MAX_SOURCE_BYTES: usize = 4096;
/// Most loop iterations an expression may need per record, estimated at load for the worst
/// record. One pass over any list in a record fits; a pass over record data inside another
/// such pass (quadratic in the record's size) does not.
pub const MAX_ITERATIONS: u64 = 1 << 25;
/// Elements a list taken from a record can have: every element costs at least a byte of the
/// record (`split('')` of a string: one per byte).
const RECORD_LIST_LEN: u64 = crate::limits::MAX_RECORD_BYTES as u64;
/// Longest string, bytes or list an expression may build by concatenation: no bigger than a
/// record, so a chain of `+` cannot multiply a record into gigabytes.
pub const MAX_VALUE_BYTES: usize = crate::limits::MAX_RECORD_BYTES;

/// A variable an expression can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Var {
    Key,
    Value,
    Partition,
    Offset,
    Timestamp,
    Headers,
    Topic,
    Item,
    Values,
    State,
    /// True in a state step's update when the key is timing out (Spark's `isTimingOut`).
    TimingOut,
    /// True in a state step's update when `remove` dropped the key.
    Removing,
    A,
    B,
}

impl Var {
    /// What every step sees of a record.
    pub const RECORD: [Var; 7] = [
        Var::Key,
        Var::Value,
        Var::Partition,
        Var::Offset,
        Var::Timestamp,
        Var::Headers,
        Var::Topic,
    ];

    /// The variables particular steps add.
    const STEP: [Var; 7] = [
        Var::Item,
        Var::Values,
        Var::State,
        Var::TimingOut,
        Var::Removing,
        Var::A,
        Var::B,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Var::Key => "key",
            Var::Value => "value",
            Var::Partition => "partition",
            Var::Offset => "offset",
            Var::Timestamp => "timestamp",
            Var::Headers => "headers",
            Var::Topic => "topic",
            Var::Item => "item",
            Var::Values => "values",
            Var::State => "state",
            Var::TimingOut => "timingOut",
            Var::Removing => "removing",
            Var::A => "a",
            Var::B => "b",
        }
    }

    pub fn from_name(name: &str) -> Option<Var> {
        Var::RECORD
            .into_iter()
            .chain(Var::STEP)
            .find(|v| v.name() == name)
    }
}

/// Where an expression finds its variables.
pub trait Vars {
    fn var(&self, v: Var) -> Option<Cow<'_, Val>>;
}

/// Why an expression was refused at load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CEL expression {source_text:?}, line {line} column {column}: {reason}")]
pub struct ExprError {
    pub source_text: String,
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

/// An expression that failed on a record (a CEL runtime error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

/// Functions an expression may call: the fast path's and the interpreter's standard library,
/// with the strings extension. Calling anything else is a load error, not a per-record one.
const FUNCTIONS: &[&str] = &[
    "size",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "dyn",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "split",
    "lowerAscii",
    "upperAscii",
    "trim",
    "replace",
    "join",
    "substring",
    "indexOf",
    "lastIndexOf",
    "charAt",
    "reverse",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    "max",
    "min",
];

fn env() -> Arc<cel::Env> {
    static ENV: OnceLock<Arc<cel::Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = cel::Env::stdlib();
        // The strings extension only fails on a duplicate declaration, which a fresh stdlib
        // environment cannot have; keep going without it rather than fail every expression.
        let _ = env.add_extension(cel::extensions::strings);
        Arc::new(env)
    })
    .clone()
}

/// A compiled expression.
pub struct Program {
    source: Arc<str>,
    root: compile::Node,
    interpreted: usize,
    uses: Vec<Var>,
    value_fields: ValueNeeds,
}

/// What of a record's `value` an expression (or a pipeline) reads.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ValueNeeds {
    /// Nothing: the value is only checked to be well-formed.
    #[default]
    Nothing,
    /// Only these top-level fields (`value.page`, `has(value.page)`, `value['page']`).
    Fields(std::collections::BTreeSet<Arc<str>>),
    /// The whole value.
    Whole,
}

impl ValueNeeds {
    pub fn merge(&mut self, other: &ValueNeeds) {
        match (&mut *self, other) {
            (_, ValueNeeds::Nothing) | (ValueNeeds::Whole, _) => {}
            (_, ValueNeeds::Whole) => *self = ValueNeeds::Whole,
            (ValueNeeds::Fields(a), ValueNeeds::Fields(b)) => a.extend(b.iter().cloned()),
            (ValueNeeds::Nothing, f) => *self = f.clone(),
        }
    }
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Program({:?})", self.source)
    }
}

impl Program {
    /// Parses, checks and compiles `source`, which may name only `vars`.
    ///
    /// # Errors
    /// A syntax error, an unknown variable or function, or a too long or too deep expression,
    /// with its position.
    pub fn compile(source: &str, vars: &[Var]) -> Result<Program, ExprError> {
        let names: Vec<&str> = vars.iter().map(|v| v.name()).collect();
        let ast = parse_checked(source, &names)?;
        let mut c = compile::Compiler {
            env: env(),
            interpreted: 0,
        };
        let root = c.compile(&ast);
        let mut uses: Vec<Var> = free_vars(&ast)
            .into_iter()
            .filter_map(Var::from_name)
            .collect();
        uses.sort_by_key(|v| v.name());
        let value_fields = value_reads(&ast);
        Ok(Program {
            source: Arc::from(source),
            root,
            interpreted: c.interpreted,
            uses,
            value_fields,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the expression names `v`.
    pub fn uses(&self, v: Var) -> bool {
        self.uses.contains(&v)
    }

    /// What of `value` the expression reads.
    pub fn value_needs(&self) -> &ValueNeeds {
        &self.value_fields
    }

    /// How many subtrees run in the interpreter rather than as closures.
    pub fn interpreted_subtrees(&self) -> usize {
        self.interpreted
    }

    /// Evaluates against a record's variables; the result borrows from them where it can.
    ///
    /// # Errors
    /// CEL runtime errors: a missing field, a type mismatch, division by zero, overflow.
    pub fn eval<'s>(&self, vars: &'s dyn Vars) -> Result<Cow<'s, Val>, EvalError> {
        (self.root)(vars)
    }

    /// Evaluates an expression that must yield a bool.
    ///
    /// # Errors
    /// As [`Program::eval`], or when the result is not a bool.
    pub fn eval_bool(&self, vars: &dyn Vars) -> Result<bool, EvalError> {
        match &*self.eval(vars)? {
            Val::Bool(b) => Ok(*b),
            other => Err(EvalError(format!(
                "expected a bool, got {}",
                other.type_name()
            ))),
        }
    }
}

/// Checks an expression without keeping it (used by spec validation).
///
/// # Errors
/// As [`Program::compile`].
pub fn check(source: &str, vars: &[&str]) -> Result<(), ExprError> {
    parse_checked(source, vars).map(|_| ())
}

fn parse_checked(source: &str, vars: &[&str]) -> Result<IdedExpr, ExprError> {
    let err = |line: usize, column: usize, reason: String| ExprError {
        source_text: source.chars().take(200).collect(),
        line,
        column,
        reason,
    };
    if source.len() > MAX_SOURCE_BYTES {
        return Err(err(
            1,
            1,
            format!("longer than {MAX_SOURCE_BYTES} bytes; split the logic into several steps"),
        ));
    }
    if source.trim().is_empty() {
        return Err(err(1, 1, "the expression is empty".into()));
    }
    let (ast, info) = Parser::new()
        .max_recursion_depth(MAX_DEPTH)
        .parse_with_source_info(source)
        .map_err(|e| {
            let first = e.errors.first();
            let (line, col) = first.map_or((1, 1), |p| {
                (p.pos.0.max(1) as usize, p.pos.1.max(0) as usize + 1)
            });
            let msg = first.map_or_else(|| "syntax error".into(), |p| p.msg.clone());
            // The parser reports its depth limit as a debug dump of its error type.
            let msg = if msg.contains("Recursion limit") {
                format!(
                    "nested deeper than {MAX_DEPTH} levels (brackets, operators, calls); \
                     simplify it or split it into steps"
                )
            } else {
                msg
            };
            err(line, col, msg)
        })?;
    let position = |id: u64| -> (usize, usize) {
        let Some((start, _)) = info.offset_for(id) else {
            return (1, 1);
        };
        let before = &source[..(start as usize).min(source.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    };
    let mut problem = None;
    walk(&ast, &mut Vec::new(), &mut |e, bound| {
        if problem.is_some() {
            return;
        }
        match &e.expr {
            Expr::Ident(name)
                if !bound.contains(&name.as_str()) && !vars.contains(&name.as_str()) =>
            {
                let (l, c) = position(e.id);
                let known = if vars.is_empty() {
                    "none".to_string()
                } else {
                    vars.join(", ")
                };
                problem = Some(err(
                    l,
                    c,
                    format!("unknown variable '{name}'; this step can use: {known}"),
                ));
            }
            Expr::Call(call) if !bound.is_empty() && loop_unsafe(call) => {
                let (l, c) = position(e.id);
                let c = c.saturating_sub(call.func_name.chars().count()).max(1);
                problem = Some(err(
                    l,
                    c,
                    format!(
                        "'{}' inside a loop (exists, all, map, filter) runs in the interpreter, \
                         where its cost grows with the square of the record; use it outside \
                         the loop, e.g. in a map step before this one",
                        call.func_name
                    ),
                ));
            }
            Expr::Call(call)
                if !call.func_name.starts_with('_')
                    && !call.func_name.starts_with('@')
                    && !call.func_name.starts_with('!')
                    && !call.func_name.starts_with('-')
                    && !FUNCTIONS.contains(&call.func_name.as_str()) =>
            {
                // The parser places a call at its '('; point at the name instead.
                let (l, c) = position(e.id);
                let c = c.saturating_sub(call.func_name.chars().count()).max(1);
                problem = Some(err(l, c, format!("unknown function '{}'", call.func_name)));
            }
            _ => {}
        }
    });
    if let Some(p) = problem {
        return Err(p);
    }
    let mut over = None;
    let total = iterations(&ast, &mut Vec::new(), 1, &mut over);
    if let Some(id) = over {
        let (l, c) = position(id);
        return Err(err(
            l,
            c,
            format!(
                "this loop can run about {total} steps per record, more than the limit of \
                 {MAX_ITERATIONS}: a loop over record data inside another one, or a scan of \
                 record data from outside the loop's element in it (`x in value.list`, \
                 `size(value.s)`, `value.s.contains(x)`), costs the square of the record's \
                 size; loop over the outer element instead (e.g. \
                 `value.items.all(i, i.tags.exists(t, t == 'x'))`), compare with literals, or \
                 split the work into steps"
            ),
        ));
    }
    // A call on constants alone (`1 + "a"`, `1 / 0`) fails on every record the same way:
    // evaluating it once here turns a dead-letter flood into a refusal at load.
    let mut failing = None;
    walk(&ast, &mut Vec::new(), &mut |e, _| {
        if failing.is_none() && matches!(e.expr, Expr::Call(_)) && free_vars(e).is_empty() {
            let mut c = compile::Compiler {
                env: env(),
                interpreted: 0,
            };
            if let Err(EvalError(why)) = c.compile(e)(&NoVars) {
                failing = Some((e.id, why));
            }
        }
    });
    if let Some((id, why)) = failing {
        let (l, c) = position(id);
        return Err(err(l, c, format!("fails on every record: {why}")));
    }
    Ok(ast)
}

/// The variables of an expression that names none.
struct NoVars;

impl Vars for NoVars {
    fn var(&self, _: Var) -> Option<Cow<'_, Val>> {
        None
    }
}

/// Worst-case loop iterations of `e` when it is evaluated `times` times; `over` gets the first
/// comprehension that takes the total past [`MAX_ITERATIONS`].
fn iterations<'a>(
    e: &'a IdedExpr,
    elements: &mut Vec<&'a str>,
    times: u64,
    over: &mut Option<u64>,
) -> u64 {
    let sum = |xs: &[&'a IdedExpr], elements: &mut Vec<&'a str>, over: &mut Option<u64>| {
        xs.iter().fold(0u64, |acc, x| {
            acc.saturating_add(iterations(x, elements, times, over))
        })
    };
    match &e.expr {
        Expr::Call(c) => {
            let mut xs: Vec<&IdedExpr> = c.args.iter().collect();
            xs.extend(c.target.as_deref());
            // Scanning record data from outside the loop's element costs up to the record's
            // size on every iteration: count it as a loop of that length.
            let scans = if times > 1 && scans_outside_data(c, elements) {
                times.saturating_mul(RECORD_LIST_LEN)
            } else {
                0
            };
            sum(&xs, elements, over).saturating_add(scans)
        }
        Expr::Select(s) => sum(&[&s.operand], elements, over),
        Expr::List(l) => sum(&l.elements.iter().collect::<Vec<_>>(), elements, over),
        Expr::Map(m) => {
            let mut xs = Vec::new();
            for entry in &m.entries {
                if let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr {
                    xs.push(&me.key);
                    xs.push(&me.value);
                }
            }
            sum(&xs, elements, over)
        }
        Expr::Struct(s) => {
            let xs: Vec<&IdedExpr> = s
                .entries
                .iter()
                .filter_map(|entry| match &entry.expr {
                    cel::common::ast::EntryExpr::StructField(sf) => Some(&sf.value),
                    _ => None,
                })
                .collect();
            sum(&xs, elements, over)
        }
        Expr::Comprehension(c) => {
            let outside = sum(&[&c.iter_range, &c.accu_init], elements, over);
            // A loop over part of an enclosing loop's element visits, across the enclosing
            // loop, at most the elements of the record once: it adds iterations without
            // multiplying the body's.
            let (per_pass, body_times) = if part_of(&c.iter_range, elements) {
                (RECORD_LIST_LEN.min(MAX_ITERATIONS), times)
            } else {
                let n = range_len(&c.iter_range);
                (times.saturating_mul(n), times.saturating_mul(n))
            };
            let depth = elements.len();
            elements.push(&c.iter_var);
            elements.extend(c.iter_var2.as_deref());
            let body = [&c.loop_cond, &c.loop_step].iter().fold(0u64, |acc, x| {
                acc.saturating_add(iterations(x, elements, body_times, over))
            });
            elements.truncate(depth);
            let result = iterations(&c.result, elements, times, over);
            let total = outside
                .saturating_add(per_pass)
                .saturating_add(body)
                .saturating_add(result);
            if total > MAX_ITERATIONS && over.is_none() {
                *over = Some(e.id);
            }
            total
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => 0,
    }
}

/// Whether a call walks record data that does not come from an enclosing loop's element:
/// `x in value.list`, `size(value.s)`, `value.s.contains(x)`, `value.a == value.b`.
fn scans_outside_data(c: &cel::common::ast::CallExpr, elements: &[&str]) -> bool {
    use cel::common::ast::operators as op;
    let outside = |e: &IdedExpr| record_rooted(e) && !part_of(e, elements);
    let name = c.func_name.as_str();
    if name == op::IN {
        return c.args.get(1).is_some_and(outside);
    }
    if name == op::EQUALS || name == op::NOT_EQUALS {
        return c.args.len() == 2 && c.args.iter().all(outside);
    }
    const SCANNING: &[&str] = &[
        "size",
        "contains",
        "startsWith",
        "endsWith",
        "split",
        "lowerAscii",
        "upperAscii",
        "trim",
        "reverse",
        "substring",
        "charAt",
        "matches",
        "string",
        "bytes",
    ];
    SCANNING.contains(&name) && c.target.as_deref().or(c.args.first()).is_some_and(outside)
}

/// Whether an expression is a record variable or a field or element of one.
fn record_rooted(e: &IdedExpr) -> bool {
    match &e.expr {
        Expr::Ident(name) => Var::from_name(name).is_some(),
        Expr::Select(s) => record_rooted(&s.operand),
        Expr::Call(c) if c.func_name == cel::common::ast::operators::INDEX && c.args.len() == 2 => {
            record_rooted(&c.args[0])
        }
        _ => false,
    }
}

/// Whether a loop's range is a part (a field, an element) of an enclosing loop's element.
fn part_of(range: &IdedExpr, elements: &[&str]) -> bool {
    match &range.expr {
        Expr::Ident(name) => elements.contains(&name.as_str()),
        Expr::Select(s) => part_of(&s.operand, elements),
        Expr::Call(c) if c.func_name == cel::common::ast::operators::INDEX && c.args.len() == 2 => {
            matches!(c.args[1].expr, Expr::Literal(_)) && part_of(&c.args[0], elements)
        }
        _ => false,
    }
}

/// How many elements a loop's range can have: a list literal of literals has its length;
/// anything else may be as long as a list in a record.
fn range_len(range: &IdedExpr) -> u64 {
    match &range.expr {
        Expr::List(l)
            if l.elements
                .iter()
                .all(|x| matches!(x.expr, Expr::Literal(_))) =>
        {
            l.elements.len() as u64
        }
        _ => RECORD_LIST_LEN,
    }
}

/// Functions that are linear (and size-checked) as closures but not in the interpreter, which
/// evaluates everything inside a loop: `indexOf` searches naively, `replace` and `join` build
/// strings of any size, and `matches` compiles its pattern on every iteration.
fn loop_unsafe(call: &cel::common::ast::CallExpr) -> bool {
    match call.func_name.as_str() {
        "indexOf" | "lastIndexOf" | "replace" | "join" => true,
        "matches" => {
            let pattern = if call.target.is_some() {
                call.args.first()
            } else {
                call.args.get(1)
            };
            !pattern.is_some_and(|p| matches!(p.expr, Expr::Literal(_)))
        }
        _ => false,
    }
}

/// Visits every node with the comprehension variables bound at that point.
fn walk<'a>(
    e: &'a IdedExpr,
    bound: &mut Vec<&'a str>,
    f: &mut dyn FnMut(&'a IdedExpr, &[&'a str]),
) {
    f(e, bound);
    match &e.expr {
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, bound, f);
            }
            for a in &c.args {
                walk(a, bound, f);
            }
        }
        Expr::Select(s) => walk(&s.operand, bound, f),
        Expr::List(l) => l.elements.iter().for_each(|x| walk(x, bound, f)),
        Expr::Map(m) => {
            for entry in &m.entries {
                if let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr {
                    walk(&me.key, bound, f);
                    walk(&me.value, bound, f);
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let cel::common::ast::EntryExpr::StructField(sf) = &entry.expr {
                    walk(&sf.value, bound, f);
                }
            }
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, bound, f);
            walk(&c.accu_init, bound, f);
            let depth = bound.len();
            bound.push(&c.iter_var);
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2);
            }
            bound.push(&c.accu_var);
            walk(&c.loop_cond, bound, f);
            walk(&c.loop_step, bound, f);
            walk(&c.result, bound, f);
            bound.truncate(depth);
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// Collects the top-level fields of `value` an expression reads; any other use of `value`
/// (passing it whole, iterating it, indexing it with a computed key) needs all of it.
fn value_reads(e: &IdedExpr) -> ValueNeeds {
    use cel::common::ast::LiteralValue;
    let mut out = ValueNeeds::Nothing;
    // Nodes are visited parent first: a `value` read through a field or a literal index is
    // recorded at its parent, and its own node is then not a read of the whole value.
    let mut read_by_field = HashSet::new();
    walk(e, &mut Vec::new(), &mut |n, bound| {
        let free_value = |x: &IdedExpr| matches!(&x.expr, Expr::Ident(v) if v == "value" && !bound.contains(&"value"));
        match &n.expr {
            Expr::Select(s) if free_value(&s.operand) => {
                read_by_field.insert(s.operand.id);
                out.merge(&ValueNeeds::Fields(
                    std::iter::once(Arc::from(s.field.as_str())).collect(),
                ));
            }
            Expr::Call(c)
                if c.func_name == cel::common::ast::operators::INDEX
                    && c.target.is_none()
                    && c.args.len() == 2
                    && free_value(&c.args[0]) =>
            {
                if let Expr::Literal(LiteralValue::String(f)) = &c.args[1].expr {
                    read_by_field.insert(c.args[0].id);
                    out.merge(&ValueNeeds::Fields(
                        std::iter::once(Arc::from(f.inner())).collect(),
                    ));
                }
            }
            Expr::Ident(v)
                if v == "value" && !bound.contains(&"value") && !read_by_field.contains(&n.id) =>
            {
                out.merge(&ValueNeeds::Whole)
            }
            _ => {}
        }
    });
    out
}

/// The free variables of an expression (those not bound by a comprehension inside it).
pub(crate) fn free_vars(e: &IdedExpr) -> HashSet<&str> {
    let mut out = HashSet::new();
    walk(e, &mut Vec::new(), &mut |n, bound| {
        if let Expr::Ident(name) = &n.expr {
            if !bound.contains(&name.as_str()) {
                out.insert(name.as_str());
            }
        }
    });
    out
}

#[cfg(test)]
mod tests;
