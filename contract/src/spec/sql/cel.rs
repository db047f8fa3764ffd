//! SQL expressions as CEL: each SQL expression a query may hold becomes the CEL expression the
//! hand-written step would carry, so a SQL step runs on the same evaluator as every other step.
//!
//! A column `page` is the record value's field (`value.page`); `_key`, `_value`, `_topic`,
//! `_partition`, `_offset` and `_timestamp` are the record's own parts; `t.col` of a joined
//! table `t` is the row's column (`table.col`). After GROUP BY (the
//! grouped scope) a column must be a grouping key (it becomes the record's key), inside an
//! aggregate, or the window's bounds.

use sqlparser::ast::{
    BinaryOperator, CastKind, DuplicateTreatment, Expr as Sql, Function, FunctionArg,
    FunctionArgExpr, FunctionArguments, Ident, InTarget, ObjectNamePart, UnaryOperator, Value,
};

use super::{at, SqlError};

/// The record's own parts, as SQL names them.
const RECORD_COLUMNS: &[(&str, &str)] = &[
    ("_key", "key"),
    ("_value", "value"),
    ("_topic", "topic"),
    ("_partition", "partition"),
    ("_offset", "offset"),
    ("_timestamp", "timestamp"),
];

/// The SQL functions a query may call outside aggregates, for the refusal's list.
const SCALAR_FUNCTIONS: &str = "LOWER, UPPER, TRIM, LENGTH, CHAR_LENGTH, CONCAT, COALESCE";

/// An aggregate a grouped query computes.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Agg {
    Count,
    /// COUNT(x): the records whose x is present and not null.
    CountOf(String),
    Sum(String),
    Min(String),
    Max(String),
    Avg(String),
}

impl Agg {
    /// The aggregate's input expression; none for COUNT(*).
    pub(super) fn input(&self) -> Option<&str> {
        match self {
            Agg::Count => None,
            Agg::CountOf(x) | Agg::Sum(x) | Agg::Min(x) | Agg::Max(x) | Agg::Avg(x) => Some(x),
        }
    }

    /// The same aggregate over another input.
    pub(super) fn over(&self, x: &str) -> Agg {
        let x = x.to_string();
        match self {
            Agg::Count => Agg::Count,
            Agg::CountOf(_) => Agg::CountOf(x),
            Agg::Sum(_) => Agg::Sum(x),
            Agg::Min(_) => Agg::Min(x),
            Agg::Max(_) => Agg::Max(x),
            Agg::Avg(_) => Agg::Avg(x),
        }
    }
}

/// What a grouped query's expressions may name besides aggregates: its keys (as their
/// row-scope CEL) and whether a window groups it.
pub(super) struct Grouped {
    pub keys: Vec<String>,
    pub window: Option<&'static str>,
    /// The aggregates met so far, each once.
    pub aggs: Vec<(String, Agg)>,
    /// Whether aggregates are named as fields of an object (several) or are the value (one).
    pub several: bool,
}

impl Grouped {
    /// Where the aggregate results sit in a record after the aggregate step.
    fn results(&self) -> &'static str {
        if self.window.is_some() {
            "value.value"
        } else {
            "value"
        }
    }

    fn key_ref(&self, i: usize) -> String {
        if self.keys.len() == 1 {
            "key".into()
        } else {
            format!("key[{i}]")
        }
    }

    fn agg_ref(&mut self, text: String, agg: Agg) -> String {
        let i = match self.aggs.iter().position(|(t, _)| *t == text) {
            Some(i) => i,
            None => {
                self.aggs.push((text, agg.clone()));
                self.aggs.len() - 1
            }
        };
        let base = self.results();
        match (self.several, &self.aggs[i].1) {
            (false, _) => base.to_string(),
            (true, Agg::Avg(_)) => format!("({base}.a{i} / double({base}.n{i}))"),
            (true, _) => format!("{base}.a{i}"),
        }
    }
}

/// What a query's columns may be qualified by.
pub(super) struct Names {
    /// The input: `input`, and its alias.
    pub input: Vec<String>,
    /// A joined table's name and alias, and whether the join is a left join (its columns are
    /// then NULL for a record without a row).
    pub table: Option<(Vec<String>, bool)>,
}

/// Translates SQL expressions of one query.
pub(super) struct Translator<'a> {
    pub tables: &'a Names,
    pub grouped: Option<&'a mut Grouped>,
}

impl Translator<'_> {
    pub(super) fn row(tables: &Names) -> Translator<'_> {
        Translator {
            tables,
            grouped: None,
        }
    }

    pub(super) fn expr(&mut self, e: &Sql) -> Result<String, SqlError> {
        if let Some(g) = self.grouped.as_deref() {
            // An expression equal to a grouping key is that key, whatever its shape.
            if let Ok(row) = Translator::row(self.tables).expr(e) {
                if let Some(i) = g.keys.iter().position(|k| *k == row) {
                    return Ok(g.key_ref(i));
                }
            }
        }
        match e {
            Sql::Identifier(id) => self.column(std::slice::from_ref(id), e),
            Sql::CompoundIdentifier(parts) => self.column(parts, e),
            Sql::Value(v) => literal(&v.value, e),
            Sql::Nested(inner) => Ok(format!("({})", self.expr(inner)?)),
            Sql::BinaryOp { left, op, right } => {
                let op = match op {
                    BinaryOperator::Plus | BinaryOperator::StringConcat => "+",
                    BinaryOperator::Minus => "-",
                    BinaryOperator::Multiply => "*",
                    BinaryOperator::Divide => "/",
                    BinaryOperator::Modulo => "%",
                    BinaryOperator::Eq => "==",
                    BinaryOperator::NotEq => "!=",
                    BinaryOperator::Lt => "<",
                    BinaryOperator::LtEq => "<=",
                    BinaryOperator::Gt => ">",
                    BinaryOperator::GtEq => ">=",
                    BinaryOperator::And => "&&",
                    BinaryOperator::Or => "||",
                    other => return Err(at(e, format!("the operator {other} is not supported"))),
                };
                Ok(format!("({} {op} {})", self.expr(left)?, self.expr(right)?))
            }
            Sql::UnaryOp { op, expr } => match op {
                UnaryOperator::Not => Ok(format!("!({})", self.expr(expr)?)),
                UnaryOperator::Minus => Ok(format!("-({})", self.expr(expr)?)),
                UnaryOperator::Plus => self.expr(expr),
                other => Err(at(e, format!("the operator {other} is not supported"))),
            },
            Sql::IsNull(x) => Ok(format!("!({})", self.present(x)?)),
            Sql::IsNotNull(x) => self.present(x),
            Sql::IsTrue(x) => Ok(format!("({} == true)", self.expr(x)?)),
            Sql::IsFalse(x) => Ok(format!("({} == false)", self.expr(x)?)),
            Sql::In {
                expr,
                target: InTarget::List(list),
                negated,
                ..
            } => {
                let items = list
                    .iter()
                    .map(|i| self.expr(i))
                    .collect::<Result<Vec<_>, _>>()?;
                let test = format!("({} in [{}])", self.expr(expr)?, items.join(", "));
                Ok(if *negated { format!("!{test}") } else { test })
            }
            Sql::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let x = self.expr(expr)?;
                let test = format!(
                    "({x} >= {} && {x} <= {})",
                    self.expr(low)?,
                    self.expr(high)?
                );
                Ok(if *negated { format!("!{test}") } else { test })
            }
            Sql::Like {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            }
            | Sql::ILike {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            } => {
                if *any || escape_char.is_some() {
                    return Err(at(e, "LIKE ANY and LIKE ... ESCAPE are not supported"));
                }
                let Sql::Value(p) = pattern.as_ref() else {
                    return Err(at(
                        pattern.as_ref(),
                        "a LIKE pattern must be a string literal",
                    ));
                };
                let Some(p) = p.value.clone().into_string() else {
                    return Err(at(
                        pattern.as_ref(),
                        "a LIKE pattern must be a string literal",
                    ));
                };
                let flags = if matches!(e, Sql::ILike { .. }) {
                    "(?i)"
                } else {
                    ""
                };
                let regex = format!("{flags}^{}$", like_regex(&p));
                let test = format!("({}).matches({})", self.expr(expr)?, quote(&regex));
                Ok(if *negated { format!("!{test}") } else { test })
            }
            Sql::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let mut out = match else_result {
                    Some(x) => self.expr(x)?,
                    None => "null".into(),
                };
                let operand = operand.as_ref().map(|o| self.expr(o)).transpose()?;
                for w in conditions.iter().rev() {
                    let cond = match &operand {
                        Some(o) => format!("{o} == {}", self.expr(&w.condition)?),
                        None => self.expr(&w.condition)?,
                    };
                    out = format!("({cond} ? {} : {out})", self.expr(&w.result)?);
                }
                Ok(out)
            }
            Sql::Cast {
                kind,
                expr,
                data_type,
                format,
            } => {
                if !matches!(kind, CastKind::Cast | CastKind::DoubleColon) || format.is_some() {
                    return Err(at(e, "only CAST(x AS type) and x::type are supported"));
                }
                let ty = data_type.to_string().to_ascii_uppercase();
                let base = ty.split('(').next().unwrap_or_default().trim();
                let func = match base {
                    "INT" | "INTEGER" | "BIGINT" | "SMALLINT" | "TINYINT" | "INT64" => "int",
                    "DOUBLE" | "DOUBLE PRECISION" | "FLOAT" | "REAL" | "DECIMAL" | "NUMERIC"
                    | "FLOAT64" => "double",
                    "VARCHAR" | "STRING" | "TEXT" | "CHAR" => "string",
                    "BOOLEAN" | "BOOL" => "bool",
                    "TIMESTAMP" => "timestamp",
                    _ => {
                        return Err(at(
                            e,
                            format!("CAST to {ty} is not supported; cast to INT, DOUBLE, VARCHAR, BOOLEAN or TIMESTAMP"),
                        ))
                    }
                };
                Ok(format!("{func}({})", self.expr(expr)?))
            }
            Sql::Function(f) => match (&f.args, f.name.0.as_slice()) {
                // Some column names are SQL keywords that parse as calls without parentheses
                // (`user`, `current_date`): without parentheses they are columns here.
                (FunctionArguments::None, [ObjectNamePart::Identifier(id)]) => {
                    self.column(std::slice::from_ref(id), e)
                }
                _ => self.function(f, e),
            },
            Sql::Trim {
                trim_where: None,
                trim_what: None,
                expr,
                trim_characters: None,
            } => Ok(format!("({}).trim()", self.expr(expr)?)),
            Sql::Interval(_) => Err(at(
                e,
                "an INTERVAL is only an argument of TUMBLE, HOP or SESSION in GROUP BY",
            )),
            Sql::Subquery(_) | Sql::Exists { .. } | Sql::In { .. } => {
                Err(at(e, "subqueries are not supported"))
            }
            other => Err(at(
                e,
                format!("the expression {other} is not supported in a SQL step"),
            )),
        }
    }

    /// A column: a field of the record's value (a path for `a.b`), or one of its own parts.
    fn column(&mut self, parts: &[Ident], e: &Sql) -> Result<String, SqlError> {
        let mut parts = parts;
        let named =
            |names: &[String], p: &Ident| names.iter().any(|t| t.eq_ignore_ascii_case(&p.value));
        if parts.len() > 1 && named(&self.tables.input, &parts[0]) {
            parts = &parts[1..];
        }
        if let Some((names, left)) = &self.tables.table {
            if parts.len() > 1 && named(names, &parts[0]) && self.grouped.is_none() {
                if parts[1].value.eq_ignore_ascii_case("_key") {
                    return Err(at(
                        e,
                        "the table's _key is the join key: select the input's side of ON instead",
                    ));
                }
                let mut path = "table".to_string();
                for p in &parts[1..] {
                    path = field(&path, &p.value);
                }
                // A left join's record without a row has no table: its columns are NULL.
                return Ok(if *left {
                    format!("(table == null ? null : {path})")
                } else {
                    path
                });
            }
        }
        let first = &parts[0].value;
        if let Some(g) = self.grouped.as_deref() {
            let bound = match first.to_ascii_lowercase().as_str() {
                "window_start" => "start",
                "window_end" => "end",
                _ => {
                    return Err(at(
                        e,
                        format!("column {e} is neither in GROUP BY nor inside an aggregate; group by it or aggregate it (e.g. MAX({e}))"),
                    ))
                }
            };
            return match g.window {
                Some(_) if parts.len() == 1 => Ok(format!("value.window.{bound}")),
                _ => Err(at(
                    e,
                    format!("{first} names the window's bounds; GROUP BY TUMBLE, HOP or SESSION to have a window"),
                )),
            };
        }
        let mut out = if first.starts_with('_') && parts[0].quote_style.is_none() {
            match RECORD_COLUMNS
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(first))
            {
                Some((_, var)) => (*var).to_string(),
                None => {
                    return Err(at(
                        e,
                        format!("{first} is not a record column; the record's own parts are _key, _value, _topic, _partition, _offset and _timestamp (quote a value field that starts with '_': \"{first}\")"),
                    ))
                }
            }
        } else {
            field("value", first)
        };
        for p in &parts[1..] {
            out = field(&out, &p.value);
        }
        Ok(out)
    }

    /// CEL that is true when `x` is present and not null (SQL's IS NOT NULL): a missing field
    /// of the value is SQL's NULL too.
    fn present(&mut self, x: &Sql) -> Result<String, SqlError> {
        let cel = self.expr(x)?;
        match cel.rsplit_once('.') {
            Some((_, last)) if cel.starts_with("value.") && last.chars().all(is_ident_char) => {
                Ok(format!("(has({cel}) && {cel} != null)"))
            }
            _ => Ok(format!("({cel} != null)")),
        }
    }

    fn function(&mut self, f: &Function, e: &Sql) -> Result<String, SqlError> {
        let name = f.name.to_string().to_ascii_uppercase();
        if f.over.is_some() {
            return Err(at(e, "window functions (OVER) are not supported"));
        }
        if f.filter.is_some() || !f.within_group.is_empty() {
            return Err(at(e, "FILTER and WITHIN GROUP are not supported"));
        }
        let FunctionArguments::List(list) = &f.args else {
            return Err(at(e, format!("{name} needs its arguments in parentheses")));
        };
        if !list.clauses.is_empty() {
            return Err(at(
                e,
                format!("clauses inside {name}(...) are not supported"),
            ));
        }
        let distinct = matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
        let star = matches!(
            list.args.as_slice(),
            [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)]
        );
        let args = || {
            list.args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => Ok(x),
                    _ => Err(at(
                        e,
                        format!("{name} takes plain arguments, not * or names"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
        };
        if let Some(kind) = aggregate_kind(&name) {
            if distinct {
                return Err(at(e, format!("{name}(DISTINCT ...) is not supported")));
            }
            let text = e.to_string();
            let Some(g) = self.grouped.as_deref_mut() else {
                return Err(at(
                    e,
                    format!("{name} is an aggregate: it needs GROUP BY (in WHERE, filter after the aggregate with HAVING)"),
                ));
            };
            let agg = if kind == "COUNT" && star {
                Agg::Count
            } else {
                let args = args()?;
                let [arg] = args.as_slice() else {
                    return Err(at(e, format!("{name} takes one argument")));
                };
                if kind == "COUNT" && matches!(arg, Sql::Value(_)) {
                    Agg::Count
                } else {
                    let x = Translator::row(self.tables).expr(arg)?;
                    match kind {
                        "COUNT" => Agg::CountOf(Translator::row(self.tables).present(arg)?),
                        "SUM" => Agg::Sum(x),
                        "MIN" => Agg::Min(x),
                        "MAX" => Agg::Max(x),
                        _ => Agg::Avg(x),
                    }
                }
            };
            return Ok(g.agg_ref(text, agg));
        }
        if let Some(bound) = window_bound(&name) {
            return match self.grouped.as_deref().and_then(|g| g.window) {
                Some(w) if name.starts_with(w) => Ok(format!("value.window.{bound}")),
                _ => Err(at(
                    e,
                    format!(
                        "{name} names the bounds of a window grouped by {}; GROUP BY it",
                        name.rsplit_once('_').map_or("", |p| p.0)
                    ),
                )),
            };
        }
        if matches!(name.as_str(), "TUMBLE" | "HOP" | "SESSION") {
            return Err(at(
                e,
                format!("{name} groups records into windows: it belongs in GROUP BY"),
            ));
        }
        if distinct || star {
            return Err(at(e, format!("{name} takes plain arguments")));
        }
        let args = args()?
            .into_iter()
            .map(|a| self.expr(a))
            .collect::<Result<Vec<_>, _>>()?;
        let one = |what: &str| match args.as_slice() {
            [a] => Ok(format!("({a}).{what}()")),
            _ => Err(at(e, format!("{name} takes one argument"))),
        };
        match name.as_str() {
            "LOWER" => one("lowerAscii"),
            "UPPER" => one("upperAscii"),
            "LENGTH" | "CHAR_LENGTH" => match args.as_slice() {
                [a] => Ok(format!("size({a})")),
                _ => Err(at(e, format!("{name} takes one argument"))),
            },
            "CONCAT" if !args.is_empty() => Ok(format!(
                "({})",
                args.iter()
                    .map(|a| format!("string({a})"))
                    .collect::<Vec<_>>()
                    .join(" + ")
            )),
            "COALESCE" if !args.is_empty() => {
                let FunctionArguments::List(list) = &f.args else {
                    unreachable!("matched above")
                };
                // The last argument is the answer when every other one is NULL.
                let mut out = args[args.len() - 1].clone();
                for (a, cel) in list.args.iter().zip(&args).rev().skip(1) {
                    let FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) = a else {
                        unreachable!("checked by args()")
                    };
                    out = format!("({} ? {cel} : {out})", self.present(x)?);
                }
                Ok(out)
            }
            _ => Err(at(
                e,
                format!("unknown function {name}; a SQL step knows {SCALAR_FUNCTIONS}, the aggregates COUNT, SUM, MIN, MAX, AVG, and TUMBLE, HOP, SESSION in GROUP BY"),
            )),
        }
    }
}

/// The aggregate a function name calls, if it is one.
pub(super) fn aggregate_kind(name: &str) -> Option<&'static str> {
    ["COUNT", "SUM", "MIN", "MAX", "AVG"]
        .into_iter()
        .find(|k| *k == name)
}

/// `TUMBLE_START` and its kin name a window's start or end.
fn window_bound(name: &str) -> Option<&'static str> {
    let (kind, bound) = name.rsplit_once('_')?;
    if !matches!(kind, "TUMBLE" | "HOP" | "SESSION") {
        return None;
    }
    match bound {
        "START" => Some("start"),
        "END" => Some("end"),
        _ => None,
    }
}

fn literal(v: &Value, e: &Sql) -> Result<String, SqlError> {
    match v {
        Value::Number(n, _) => Ok(n.clone()),
        Value::Boolean(b) => Ok(b.to_string()),
        Value::Null => Ok("null".into()),
        Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => Ok(quote(s)),
        _ => Err(at(
            e,
            "this literal is not supported; write numbers, 'strings', TRUE, FALSE or NULL",
        )),
    }
}

/// A CEL string literal: JSON's escaping is CEL's.
pub(super) fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `base.name`, or `base["name"]` when the name is not a CEL identifier.
fn field(base: &str, name: &str) -> String {
    const RESERVED: &[&str] = &[
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ];
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(is_ident_char)
        && !RESERVED.contains(&name);
    if plain {
        format!("{base}.{name}")
    } else {
        format!("{base}[{}]", quote(name))
    }
}

/// A LIKE pattern as a regular expression: `%` any run, `_` one character, the rest literal.
fn like_regex(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    for c in pattern.chars() {
        match c {
            '%' => out.push_str(".*"),
            '_' => out.push('.'),
            c if "\\.+*?()|[]{}^$".contains(c) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}
