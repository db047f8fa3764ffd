//! The checks at load: an expression that does not parse, names an unknown variable or
//! function, could loop about the square of a record's size, or fails on every record (a
//! call on constants alone) is refused with its line and column, before any record is read.

use std::borrow::Cow;

use cel::common::ast::{Expr, IdedExpr};
use cel::parser::Parser;

use super::{
    compile, env, free_vars, walk, EvalError, ExprError, Var, Vars, FUNCTIONS, MAX_DEPTH,
    MAX_ITERATIONS, MAX_SOURCE_BYTES, RECORD_LIST_LEN, TIME_FUNCTIONS,
};
use crate::value::Val;

/// Checks an expression without keeping it (used by spec validation).
///
/// # Errors
/// As [`Program::compile`].
pub fn check(source: &str, vars: &[&str]) -> Result<(), ExprError> {
    parse_checked(source, vars).map(|_| ())
}

pub(super) fn parse_checked(source: &str, vars: &[&str]) -> Result<IdedExpr, ExprError> {
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
                    && !FUNCTIONS.contains(&call.func_name.as_str())
                    && !TIME_FUNCTIONS.contains(&call.func_name.as_str()) =>
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
