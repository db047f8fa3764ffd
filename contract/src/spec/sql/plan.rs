//! A query's plan: the steps a SQL step compiles to, in the order a hand-written pipeline
//! would hold them (a JOIN of a table a join step; WHERE a filter; GROUP BY a keyBy, the
//! aggregate, windowed when a window groups it; HAVING a filter; the select list a select).

use std::collections::BTreeMap;

use sqlparser::ast::{
    BinaryOperator, Expr as Sql, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    JoinConstraint, JoinOperator, Query, Select, SelectItem, SetExpr, Statement, TableFactor,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use super::cel::{Agg, Grouped, Names, Translator};
use super::{at, interval, Compiled, SqlError, TimeColumn};
use crate::expr::{Program, Var};
use crate::spec::{
    AggregateSpec, Duration, Empty, JoinKind, JoinSpec, StepSpec, TableSpec, WindowSpec, WindowTime,
};

/// Nesting the parser follows before it refuses a query: deep enough for any real query,
/// shallow enough that a hostile one cannot exhaust the stack.
const RECURSION_LIMIT: usize = 40;

/// Compiles a SQL step's query into steps whose ids start with the step's `id`; the aggregate
/// (whose state is kept under its id) takes `id` itself.
pub fn compile(sql: &str, id: &str) -> Result<Compiled, SqlError> {
    let statements = Parser::new(&GenericDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(SqlError::parse)?;
    let query = match statements.as_slice() {
        [Statement::Query(q)] => q,
        [] => {
            return Err(SqlError::new(
                1,
                1,
                "the query is empty; write SELECT ... FROM input",
            ))
        }
        [one] => return Err(at(one, "only a SELECT query is supported in a SQL step")),
        [_, second, ..] => {
            return Err(at(
                second,
                "a SQL step holds one query; remove the statements after the first",
            ))
        }
    };
    let select = plain_select(query)?;
    let (tables, join) = sources(select)?;
    let mut steps = Vec::new();
    let step = |suffix: &str| StepSpec {
        id: if suffix.is_empty() {
            id.to_string()
        } else {
            format!("{id}-{suffix}")
        },
        ..StepSpec::default()
    };
    if let Some(j) = join {
        steps.push(StepSpec {
            join: Some(j),
            ..step("join")
        });
    }
    if let Some(w) = &select.selection {
        steps.push(StepSpec {
            filter: Some(Translator::row(&tables).expr(w)?),
            ..step("where")
        });
    }
    let group_by = match &select.group_by {
        GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => exprs,
        other => {
            return Err(at(
                select,
                format!("GROUP BY {other} is not supported; group by columns and at most one TUMBLE, HOP or SESSION"),
            ))
        }
    };
    if group_by.is_empty() {
        if let Some(h) = &select.having {
            return Err(at(h, "HAVING needs GROUP BY; filter rows with WHERE"));
        }
        if let Some(fields) = projection(select, &mut Translator::row(&tables))? {
            steps.push(StepSpec {
                select: Some(fields),
                ..step("select")
            });
        }
        return Ok(Compiled { steps, time: None });
    }

    let mut keys = Vec::new();
    let mut window: Option<(&'static str, WindowSpec, TimeColumn)> = None;
    for g in group_by {
        if let Some(w) = window_of(g, &tables)? {
            if window.is_some() {
                return Err(at(g, "a query groups by one window at most"));
            }
            window = Some(w);
        } else {
            keys.push(Translator::row(&tables).expr(g)?);
        }
    }
    if keys.is_empty() {
        return Err(at(
            &group_by[0],
            "GROUP BY needs at least one column besides the window (a global aggregate is not supported in this version)",
        ));
    }
    let mut grouped = Grouped {
        keys: keys.clone(),
        window: window.as_ref().map(|w| w.0),
        aggs: Vec::new(),
        several: false,
    };
    // The first pass finds the aggregates; the second writes references to them, which
    // depend on how many there are.
    for several in [false, true] {
        grouped.several = several && grouped.aggs.len() > 1;
        let mut t = Translator {
            tables: &tables,
            grouped: Some(&mut grouped),
        };
        if matches!(select.projection.as_slice(), [SelectItem::Wildcard(_)]) {
            return Err(at(
                &select.projection[0],
                "SELECT * cannot follow GROUP BY; name the keys and aggregates",
            ));
        }
        projection(select, &mut t)?;
        if let Some(h) = &select.having {
            t.expr(h)?;
        }
    }
    if grouped.aggs.is_empty() {
        return Err(at(
            select,
            "a grouped query needs an aggregate (COUNT, SUM, MIN, MAX or AVG) in its select list",
        ));
    }
    let mut t = Translator {
        tables: &tables,
        grouped: Some(&mut grouped),
    };
    let fields = projection(select, &mut t)?.unwrap_or_default();
    let having = select.having.as_ref().map(|h| t.expr(h)).transpose()?;

    steps.push(StepSpec {
        key_by: Some(match keys.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        }),
        ..step("key")
    });
    let aggregate = if grouped.several {
        steps.push(StepSpec {
            map: Some(fields_of(&grouped.aggs)),
            ..step("fields")
        });
        AggregateSpec {
            reduce: Some(reduce_of(&grouped.aggs)),
            ..AggregateSpec::default()
        }
    } else {
        let agg = &grouped.aggs[0].1;
        let reads_row = |x: &&str| {
            let vars = [&Var::RECORD[..], &[Var::Table]].concat();
            Program::compile(x, &vars).is_ok_and(|p| p.uses(Var::Table))
        };
        match agg.input().filter(reads_row) {
            // The row is not carried through the shuffle before the aggregate: its input is
            // computed beside the join (a map), and the aggregate adds up the value.
            Some(x) => {
                steps.push(StepSpec {
                    map: Some(x.to_string()),
                    ..step("fields")
                });
                native(&agg.over("value"))
            }
            None => native(agg),
        }
    };
    let (window, time) = match window {
        Some((_, w, time)) => (Some(w), Some(time)),
        None => (None, None),
    };
    steps.push(StepSpec {
        aggregate: Some(aggregate),
        window,
        ..step("")
    });
    if let Some(h) = having {
        steps.push(StepSpec {
            filter: Some(h),
            ..step("having")
        });
    }
    steps.push(StepSpec {
        select: Some(fields),
        ..step("select")
    });
    Ok(Compiled { steps, time })
}

/// The query's one SELECT, refusing every clause a SQL step does not run.
fn plain_select(query: &Query) -> Result<&Select, SqlError> {
    if let Some(w) = &query.with {
        return Err(at(w, "WITH is not supported; write one SELECT"));
    }
    if let Some(o) = &query.order_by {
        return Err(at(
            o,
            "ORDER BY is not supported: a stream has no end to sort by",
        ));
    }
    if let Some(l) = &query.limit_clause {
        return Err(at(l, "LIMIT is not supported on a stream"));
    }
    if let Some(f) = &query.fetch {
        return Err(at(f, "FETCH is not supported on a stream"));
    }
    if !query.locks.is_empty()
        || query.for_clause.is_some()
        || query.settings.is_some()
        || query.format_clause.is_some()
        || !query.pipe_operators.is_empty()
    {
        return Err(at(query, "this clause is not supported in a SQL step"));
    }
    let select = match query.body.as_ref() {
        SetExpr::Select(s) => s.as_ref(),
        SetExpr::Query(q) => return Err(at(q.as_ref(), "write the SELECT without parentheses")),
        SetExpr::SetOperation { op, .. } => {
            return Err(at(
                query,
                format!("{op} is not supported; a SQL step reads one input"),
            ))
        }
        other => return Err(at(other, "only SELECT ... FROM input is supported")),
    };
    let refused = [
        (select.distinct.is_some(), "DISTINCT is not supported"),
        (select.top.is_some(), "TOP is not supported"),
        (
            select.into.is_some(),
            "SELECT INTO is not supported: the job's sink is the output",
        ),
        (
            !select.lateral_views.is_empty(),
            "LATERAL VIEW is not supported; use a flatMap step",
        ),
        (
            select.prewhere.is_some(),
            "PREWHERE is not supported; use WHERE",
        ),
        (!select.connect_by.is_empty(), "CONNECT BY is not supported"),
        (!select.cluster_by.is_empty(), "CLUSTER BY is not supported"),
        (
            !select.distribute_by.is_empty(),
            "DISTRIBUTE BY is not supported",
        ),
        (!select.sort_by.is_empty(), "SORT BY is not supported"),
        (
            !select.named_window.is_empty(),
            "WINDOW clauses are not supported; group by TUMBLE, HOP or SESSION",
        ),
        (select.qualify.is_some(), "QUALIFY is not supported"),
        (select.exclude.is_some(), "EXCLUDE is not supported"),
        (
            select.value_table_mode.is_some(),
            "SELECT AS VALUE/STRUCT is not supported",
        ),
    ];
    if let Some((_, why)) = refused.iter().find(|(bad, _)| *bad) {
        return Err(at(select, *why));
    }
    Ok(select)
}

/// What the query reads: `input` (and its alias), and at most one table joined to it, `JOIN
/// <topic> [AS t] ON <input expression> = t._key` (a `join` step with that topic as its table).
fn sources(select: &Select) -> Result<(Names, Option<JoinSpec>), SqlError> {
    let [from] = select.from.as_slice() else {
        return Err(match select.from.get(1) {
            Some(second) => at(
                &second.relation,
                "a SQL step reads one input: FROM input, and at most one table joined to it",
            ),
            None => at(select, "the query has no FROM; write FROM input"),
        });
    };
    let input = table_names(&from.relation, true)?;
    let [join] = from.joins.as_slice() else {
        if let Some(second) = from.joins.get(1) {
            return Err(at(second, "a SQL step joins one table at most"));
        }
        return Ok((Names { input, table: None }, None));
    };
    let (constraint, kind) = match &join.join_operator {
        JoinOperator::Join(c) | JoinOperator::Inner(c) => (c, JoinKind::Inner),
        JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (c, JoinKind::Left),
        _ => {
            return Err(at(
                join,
                "only JOIN and LEFT JOIN of a table are supported (a stream-stream join is an intervalJoin step)",
            ))
        }
    };
    let table = table_names(&join.relation, false)?;
    let topic = table[0].clone();
    let JoinConstraint::On(on) = constraint else {
        return Err(at(
            join,
            format!("join the table with ON <input column> = {topic}._key"),
        ));
    };
    let is_table_key = |e: &Sql| match e {
        Sql::CompoundIdentifier(p) => {
            p.len() == 2
                && table.iter().any(|t| t.eq_ignore_ascii_case(&p[0].value))
                && p[1].value.eq_ignore_ascii_case("_key")
        }
        _ => false,
    };
    let input_side = match on {
        Sql::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } if is_table_key(right) => left,
        Sql::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } if is_table_key(left) => right,
        _ => {
            return Err(at(
                on,
                format!(
                    "a table is joined by its key: ON <input expression> = {}._key",
                    table.last().unwrap_or(&topic)
                ),
            ))
        }
    };
    let names = Names {
        input: input.clone(),
        table: None,
    };
    let on = Translator::row(&names).expr(input_side)?;
    let spec = JoinSpec {
        table: TableSpec {
            topic: Some(topic),
            ..TableSpec::default()
        },
        on: Some(on),
        kind,
    };
    let names = Names {
        input,
        table: Some((table, kind == JoinKind::Left)),
    };
    Ok((names, Some(spec)))
}

/// A FROM or JOIN relation's names: its own and its alias. The input is called `input`.
fn table_names(relation: &TableFactor, input: bool) -> Result<Vec<String>, SqlError> {
    let TableFactor::Table {
        name, alias, args, ..
    } = relation
    else {
        return Err(at(
            relation,
            "FROM names the step's input, and JOIN a table topic, by name",
        ));
    };
    if args.is_some() || (input && !name.to_string().eq_ignore_ascii_case("input")) {
        return Err(at(
            relation,
            format!("FROM {name}: a SQL step reads the records that reach it, called input; write FROM input"),
        ));
    }
    if !input && name.to_string().eq_ignore_ascii_case("input") {
        return Err(at(
            relation,
            "JOIN names a table topic; the input cannot be joined with itself",
        ));
    }
    let mut names = vec![name.to_string()];
    if let Some(a) = alias {
        if !a.columns.is_empty() {
            return Err(at(
                relation,
                "column aliases on a FROM or JOIN name are not supported",
            ));
        }
        names.push(a.name.value.clone());
    }
    Ok(names)
}

/// The select list as a select step's fields, or None for `SELECT *` (the records as they are).
fn projection(
    select: &Select,
    t: &mut Translator<'_>,
) -> Result<Option<BTreeMap<String, String>>, SqlError> {
    if let [SelectItem::Wildcard(opts)] = select.projection.as_slice() {
        if opts.opt_exclude.is_some()
            || opts.opt_except.is_some()
            || opts.opt_replace.is_some()
            || opts.opt_rename.is_some()
            || opts.opt_ilike.is_some()
        {
            return Err(at(&select.projection[0], "SELECT * takes no options here"));
        }
        return Ok(None);
    }
    let mut fields = BTreeMap::new();
    for item in &select.projection {
        let (e, name) = match item {
            SelectItem::ExprWithAlias { expr, alias } => (expr, alias.value.clone()),
            SelectItem::UnnamedExpr(e @ Sql::Identifier(id)) => (e, id.value.clone()),
            SelectItem::UnnamedExpr(e @ Sql::CompoundIdentifier(ids)) => {
                (e, ids.last().map(|i| i.value.clone()).unwrap_or_default())
            }
            SelectItem::UnnamedExpr(e @ Sql::Function(f))
                if matches!(f.args, FunctionArguments::None) =>
            {
                (e, f.name.to_string())
            }
            SelectItem::UnnamedExpr(e) => {
                return Err(at(e, format!("name this column: write {e} AS name")))
            }
            other => {
                return Err(at(
                    other,
                    "* cannot be mixed with other columns; name each column",
                ))
            }
        };
        let cel = t.expr(e)?;
        if fields.insert(name.clone(), cel).is_some() {
            return Err(at(item, format!("the column {name} is named twice")));
        }
    }
    Ok(Some(fields))
}

/// A GROUP BY entry that is a window: TUMBLE(time, size), HOP(time, slide, size) or
/// SESSION(time, gap), over event time.
fn window_of(
    g: &Sql,
    tables: &Names,
) -> Result<Option<(&'static str, WindowSpec, TimeColumn)>, SqlError> {
    let Sql::Function(f) = g else {
        return Ok(None);
    };
    let name = f.name.to_string().to_ascii_uppercase();
    let (kind, arity) = match name.as_str() {
        "TUMBLE" => ("TUMBLE", 2),
        "HOP" => ("HOP", 3),
        "SESSION" => ("SESSION", 2),
        _ => return Ok(None),
    };
    let args: Vec<&Sql> = match &f.args {
        FunctionArguments::List(l) => l
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => Some(x),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let usage = match kind {
        "TUMBLE" => "TUMBLE(time, INTERVAL '1' MINUTE)",
        "HOP" => "HOP(time, slide, size), e.g. HOP(ts, INTERVAL '10' SECOND, INTERVAL '1' MINUTE)",
        _ => "SESSION(time, gap), e.g. SESSION(ts, INTERVAL '5' MINUTE)",
    };
    if args.len() != arity {
        return Err(at(g, format!("{kind} takes {arity} arguments: {usage}")));
    }
    let time = match Translator::row(tables).expr(args[0])?.as_str() {
        "timestamp" => TimeColumn::Kafka,
        cel => TimeColumn::Expr(cel.to_string()),
    };
    let d = |i: usize| interval(args[i]).map(Duration::from_millis);
    let mut w = WindowSpec {
        time: WindowTime::Event,
        length: None,
        slide: None,
        gap: None,
        allowed_lateness: None,
        late: Default::default(),
        emit: Default::default(),
    };
    match kind {
        "TUMBLE" => w.length = Some(d(1)?),
        "HOP" => {
            w.slide = Some(d(1)?);
            w.length = Some(d(2)?);
        }
        _ => w.gap = Some(d(1)?),
    }
    Ok(Some((kind, w, time)))
}

/// One aggregate as the aggregate step computes it natively.
fn native(agg: &Agg) -> AggregateSpec {
    let mut a = AggregateSpec::default();
    match agg {
        Agg::Count => a.count = Some(Empty {}),
        Agg::CountOf(present) => a.sum = Some(format!("({present} ? 1 : 0)")),
        Agg::Sum(x) => a.sum = Some(x.clone()),
        Agg::Min(x) => a.min = Some(x.clone()),
        Agg::Max(x) => a.max = Some(x.clone()),
        Agg::Avg(x) => a.avg = Some(x.clone()),
    }
    a
}

/// Several aggregates: each record becomes an object of their inputs (`a0`, `a1`, ...; an
/// average also counts in `nI`), which a reduce folds.
fn fields_of(aggs: &[(String, Agg)]) -> String {
    let mut fields = Vec::new();
    for (i, (_, agg)) in aggs.iter().enumerate() {
        let input = match agg {
            Agg::Count => "1".to_string(),
            Agg::CountOf(present) => format!("({present} ? 1 : 0)"),
            Agg::Sum(x) | Agg::Min(x) | Agg::Max(x) => x.clone(),
            Agg::Avg(x) => {
                fields.push(format!("\"n{i}\": 1"));
                format!("double({x})")
            }
        };
        fields.push(format!("\"a{i}\": {input}"));
    }
    format!("{{{}}}", fields.join(", "))
}

fn reduce_of(aggs: &[(String, Agg)]) -> String {
    let mut fields = Vec::new();
    for (i, (_, agg)) in aggs.iter().enumerate() {
        let (a, b) = (format!("a.a{i}"), format!("b.a{i}"));
        let folded = match agg {
            Agg::Min(_) => format!("({a} <= {b} ? {a} : {b})"),
            Agg::Max(_) => format!("({a} >= {b} ? {a} : {b})"),
            Agg::Avg(_) => {
                fields.push(format!("\"n{i}\": a.n{i} + b.n{i}"));
                format!("{a} + {b}")
            }
            Agg::Count | Agg::CountOf(_) | Agg::Sum(_) => format!("{a} + {b}"),
        };
        fields.push(format!("\"a{i}\": {folded}"));
    }
    format!("{{{}}}", fields.join(", "))
}

impl SqlError {
    /// sqlparser's errors end with "at Line: L, Column: C"; the position is taken from there.
    fn parse(e: sqlparser::parser::ParserError) -> Self {
        let text = e.to_string();
        let text = text
            .strip_prefix("sql parser error: ")
            .unwrap_or(&text)
            .to_string();
        let position = text.rsplit_once(" at Line: ").and_then(|(reason, pos)| {
            let (l, c) = pos.split_once(", Column: ")?;
            Some((
                reason.to_string(),
                l.trim().parse().ok()?,
                c.trim().parse().ok()?,
            ))
        });
        match position {
            Some((reason, line, column)) => SqlError::new(line, column, reason),
            None => SqlError::new(1, 1, text),
        }
    }
}
