//! CEL record logic: parsed and checked at load, compiled to closures for the hot path.
//!
//! A record is seen as `key`, `value`, `partition`, `offset`, `timestamp` (ms), `headers` and
//! `topic`; after a `flatMap`, `item`; keyed steps see `key`, `values` and `state`; a reduce sees
//! `a` and `b`. An expression that names anything else, or does not parse, is refused at load
//! with its line and column.
//!
//! Here the program API; in `checks` what is refused at load (unknown names, a cost about the
//! square of a record, a call that fails on every record); in `compile` the closures.

mod checks;
mod compile;

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{Expr, IdedExpr};

pub use crate::value::Val;
pub use checks::check;
use checks::parse_checked;
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
    /// The table row a join step found (null when a left join found none).
    Table,
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
    const STEP: [Var; 8] = [
        Var::Item,
        Var::Table,
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
            Var::Table => "table",
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
];

/// The functions that make or read timestamps and durations, callable too (besides
/// [`FUNCTIONS`]).
const TIME_FUNCTIONS: &[&str] = &[
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
        // Timestamps and durations have no record value of their own (a stored one is text):
        // an expression that makes them runs whole in the interpreter, so `timestamp(a) >
        // timestamp(b)` compares times, never the texts of two separately run halves.
        let mut times = false;
        walk(&ast, &mut Vec::new(), &mut |e, _| {
            if let Expr::Call(call) = &e.expr {
                times |= TIME_FUNCTIONS.contains(&call.func_name.as_str());
            }
        });
        let root = if times {
            c.interpret(&ast)
        } else {
            c.compile(&ast)
        };
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
