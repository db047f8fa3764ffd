use std::collections::BTreeMap;

use super::*;
use crate::spec::{parse_job, WindowTime};

fn job(sql: &str, source_extra: &str) -> String {
    format!(
        "batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [in]}}{source_extra}}}\nsink: {{stdout: {{}}}}\npipeline:\n- id: q\n  sql: {}\n",
        serde_json::to_string(sql).unwrap()
    )
}

fn steps(sql: &str) -> Vec<StepSpec> {
    match parse_job(&job(sql, ", watermark: {delay: 1s}"), "t") {
        Ok(j) => j.spec.pipeline,
        Err(e) => panic!("{sql}: {e}"),
    }
}

fn refusal(sql: &str) -> String {
    match parse_job(&job(sql, ", watermark: {delay: 1s}"), "t") {
        Ok(j) => panic!("{sql} compiled to {:?}", j.spec.pipeline),
        Err(e) => e.to_string(),
    }
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_grouped_count_is_a_filter_a_key_an_aggregate_and_a_select() {
    let s = steps("SELECT page, COUNT(*) AS views FROM input WHERE status = 200 GROUP BY page");
    let ids: Vec<&str> = s.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["q-where", "q-key", "q", "q-select"]);
    assert_eq!(s[0].filter.as_deref(), Some("(value.status == 200)"));
    assert_eq!(s[1].key_by.as_deref(), Some("value.page"));
    assert!(s[2].aggregate.as_ref().unwrap().count.is_some());
    assert!(s[2].window.is_none());
    assert_eq!(
        s[3].select.clone().unwrap(),
        fields(&[("page", "key"), ("views", "value")])
    );
}

#[test]
fn a_tumbling_window_is_an_event_time_window_over_the_time_column() {
    let text = job(
        "SELECT page, TUMBLE_START(ts, INTERVAL '1' MINUTE) AS window_start, window_end, COUNT(*) AS views \
         FROM input GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), page",
        ", watermark: {delay: 5s}",
    );
    let spec = parse_job(&text, "t").unwrap().spec;
    assert_eq!(spec.source.event_time.as_deref(), Some("value.ts"));
    let agg = &spec.pipeline[1];
    let w = agg.window.as_ref().unwrap();
    assert_eq!(w.time, WindowTime::Event);
    assert_eq!(w.length.map(|d| d.as_millis()), Some(60_000));
    assert_eq!(
        spec.pipeline[2].select.clone().unwrap(),
        fields(&[
            ("page", "key"),
            ("views", "value.value"),
            ("window_end", "value.window.end"),
            ("window_start", "value.window.start"),
        ])
    );

    let hop = steps("SELECT k, COUNT(*) AS n FROM input GROUP BY HOP(_timestamp, INTERVAL '10' SECOND, INTERVAL '1 minute'), k");
    let w = hop[1].window.as_ref().unwrap();
    assert_eq!(
        (w.slide.unwrap().as_millis(), w.length.unwrap().as_millis()),
        (10_000, 60_000)
    );
    let session =
        steps("SELECT k, COUNT(*) AS n FROM input GROUP BY SESSION(ts, INTERVAL '90s'), k");
    assert_eq!(
        session[1].window.as_ref().unwrap().gap.unwrap().as_millis(),
        90_000
    );

    // The job has one event time: a window over another column is refused.
    let other = job(
        "SELECT k, COUNT(*) AS n FROM input GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), k",
        ", eventTime: value.at, watermark: {delay: 1s}",
    );
    let e = parse_job(&other, "t").unwrap_err().to_string();
    assert!(e.contains("pipeline[0].sql: the window's time column is value.ts but source.eventTime is value.at"), "{e}");
    // A window needs the watermark, as a hand-written one does; the error names the SQL step.
    let e = parse_job(
        &job(
            "SELECT k, COUNT(*) AS n FROM input GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), k",
            "",
        ),
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("pipeline[0].sql: its compiled step q.window"),
        "{e}"
    );
    assert!(e.contains("source.watermark"), "{e}");
}

#[test]
fn several_aggregates_fold_one_object_and_having_filters_after_them() {
    let s = steps(
        "SELECT user, COUNT(*) AS n, SUM(amount) AS total, AVG(amount) AS mean, MAX(amount) AS top, COUNT(coupon) AS coupons \
         FROM input GROUP BY user HAVING COUNT(*) > 1",
    );
    let ids: Vec<&str> = s.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["q-key", "q-fields", "q", "q-having", "q-select"]);
    assert_eq!(
        s[1].map.as_deref(),
        Some("{\"a0\": 1, \"a1\": value.amount, \"n2\": 1, \"a2\": double(value.amount), \"a3\": value.amount, \"a4\": ((has(value.coupon) && value.coupon != null) ? 1 : 0)}")
    );
    assert_eq!(
        s[2].aggregate.as_ref().unwrap().reduce.as_deref(),
        Some("{\"a0\": a.a0 + b.a0, \"a1\": a.a1 + b.a1, \"n2\": a.n2 + b.n2, \"a2\": a.a2 + b.a2, \"a3\": (a.a3 >= b.a3 ? a.a3 : b.a3), \"a4\": a.a4 + b.a4}")
    );
    assert_eq!(s[3].filter.as_deref(), Some("(value.a0 > 1)"));
    assert_eq!(
        s[4].select.clone().unwrap(),
        fields(&[
            ("coupons", "value.a4"),
            ("mean", "(value.a2 / double(value.n2))"),
            ("n", "value.a0"),
            ("top", "value.a3"),
            ("total", "value.a1"),
            ("user", "key"),
        ])
    );
}

#[test]
fn row_expressions_translate_to_cel() {
    let s = steps(
        "SELECT i.page, status * 2 AS s, UPPER(name) AS n, CASE WHEN status >= 500 THEN 'error' ELSE 'ok' END AS kind, \
         CAST(size AS DOUBLE) AS size, COALESCE(ref, 'direct') AS ref, _partition AS p, \"odd name\" AS odd \
         FROM input AS i WHERE page LIKE '/a_%' AND status IN (200, 304) AND NOT ref IS NULL AND size BETWEEN 1 AND 10",
    );
    assert_eq!(
        s[0].filter.as_deref(),
        Some("((((value.page).matches(\"^/a..*$\") && (value.status in [200, 304])) && !(!((has(value.ref) && value.ref != null)))) && (value.size >= 1 && value.size <= 10))")
    );
    assert_eq!(
        s[1].select.clone().unwrap(),
        fields(&[
            ("kind", "((value.status >= 500) ? \"error\" : \"ok\")"),
            ("n", "(value.name).upperAscii()"),
            ("odd", "value[\"odd name\"]"),
            ("p", "partition"),
            ("page", "value.page"),
            (
                "ref",
                "((has(value.ref) && value.ref != null) ? value.ref : \"direct\")"
            ),
            ("s", "(value.status * 2)"),
            ("size", "double(value.size)"),
        ])
    );
    // SELECT * with a WHERE is the filter alone.
    let s = steps("SELECT * FROM input WHERE _key = 'a'");
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].filter.as_deref(), Some("(key == \"a\")"));
}

#[test]
fn a_grouping_key_may_be_an_expression_and_several_keys_are_a_list() {
    let s = steps("SELECT LOWER(page) AS page, region, MIN(ms) AS fastest FROM input GROUP BY LOWER(page), region");
    assert_eq!(
        s[0].key_by.as_deref(),
        Some("[(value.page).lowerAscii(), value.region]")
    );
    assert_eq!(
        s[1].aggregate.as_ref().unwrap().min.as_deref(),
        Some("value.ms")
    );
    assert_eq!(
        s[2].select.clone().unwrap(),
        fields(&[
            ("fastest", "value"),
            ("page", "key[0]"),
            ("region", "key[1]")
        ])
    );
}

/// Each unsupported or malformed query, the line and column it is refused at, and a part of
/// the reason.
const REFUSED: &[(&str, &str, &str)] = &[
    ("SELEC page FROM input", "line 1, column 1", "Expected: an SQL statement"),
    ("", "line 1, column 1", "the query is empty"),
    ("SELECT page FROM input; SELECT 1 FROM input", "line 1, column 25", "one query"),
    ("INSERT INTO t VALUES (1)", "line 1, column 1", "only a SELECT query"),
    ("SELECT page FROM pages", "line 1, column 18", "FROM pages"),
    ("SELECT page FROM input JOIN users ON input.u = users.id", "line 1, column 38", "a table is joined by its key: ON <input expression> = users._key"),
    ("SELECT page FROM input RIGHT JOIN users ON input.u = users._key", "line 1, column 35", "only JOIN and LEFT JOIN of a table"),
    ("SELECT page FROM input JOIN input AS again ON page = again._key", "line 1, column 29", "the input cannot be joined with itself"),
    ("SELECT u._key FROM input JOIN users AS u ON page = u._key", "line 1, column 8", "the table's _key is the join key"),
    ("SELECT page FROM input ORDER BY page", "line 1, column 33", "ORDER BY is not supported"),
    ("SELECT page FROM input LIMIT 10", "line 1, column 30", "LIMIT is not supported"),
    ("SELECT DISTINCT page FROM input", "line 1, column 1", "DISTINCT is not supported"),
    ("SELECT page, COUNT(*) AS n FROM input", "line 1, column 14", "COUNT is an aggregate: it needs GROUP BY"),
    ("SELECT page, status, COUNT(*) AS n FROM input GROUP BY page", "line 1, column 14", "column status is neither in GROUP BY nor inside an aggregate"),
    ("SELECT page, COUNT(DISTINCT user) AS u FROM input GROUP BY page", "line 1, column 14", "COUNT(DISTINCT ...) is not supported"),
    ("SELECT page, status + 1 FROM input", "line 1, column 14", "name this column: write status + 1 AS name"),
    ("SELECT page, FOO(status) AS f FROM input", "line 1, column 14", "unknown function FOO"),
    ("SELECT page FROM input WHERE status IN (SELECT s FROM input)", "line 1, column 30", "subqueries are not supported"),
    ("SELECT page, COUNT(*) AS n FROM input GROUP BY TUMBLE(ts, INTERVAL '1' FORTNIGHT), page", "line 1", "Expected"),
    ("SELECT page, COUNT(*) AS n FROM input GROUP BY TUMBLE(ts, INTERVAL '0' MINUTE), page", "line 1, column 68", "must be a positive number"),
    ("SELECT page, COUNT(*) AS n FROM input GROUP BY TUMBLE(ts), page", "line 1, column 48", "TUMBLE takes 2 arguments"),
    ("SELECT page, COUNT(*) AS n FROM input GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)", "line 1, column 48", "at least one column besides the window"),
    ("SELECT page, COUNT(*) AS n FROM input GROUP BY page UNION SELECT page, COUNT(*) AS n FROM input GROUP BY page", "line 1, column 1", "UNION is not supported"),
    ("SELECT page, SUM(x) OVER (PARTITION BY page) AS s FROM input", "line 1, column 14", "window functions (OVER) are not supported"),
    ("SELECT page AS a, status AS a FROM input", "line 1, column 19", "the column a is named twice"),
    ("SELECT page FROM input WHERE page ~ 'a'", "line 1, column 30", "the operator ~ is not supported"),
    ("SELECT page, window_start, COUNT(*) AS n FROM input GROUP BY page", "line 1, column 14", "GROUP BY TUMBLE, HOP or SESSION to have a window"),
    ("SELECT _secret FROM input", "line 1, column 8", "_secret is not a record column"),
    ("(", "line 1", "Expected"),
];

#[test]
fn every_unsupported_query_is_refused_with_its_position_and_reason() {
    for (sql, position, reason) in REFUSED {
        let e = refusal(sql);
        assert!(e.contains("pipeline[0].sql: "), "{sql}: {e}");
        assert!(e.contains(position), "{sql}: expected {position}: {e}");
        assert!(e.contains(reason), "{sql}: expected {reason:?}: {e}");
    }
    assert!(REFUSED.len() >= 20);
}

#[test]
fn a_deeply_nested_query_is_refused_not_followed_down() {
    let deep = format!(
        "SELECT {}1{} AS x FROM input",
        "(".repeat(5_000),
        ")".repeat(5_000)
    );
    let e = refusal(&deep);
    assert!(e.contains("recursion limit"), "{e}");
}

#[test]
fn a_query_longer_than_the_limit_is_refused_before_it_is_parsed() {
    let long = format!(
        "SELECT page FROM input WHERE {}",
        vec!["page = 'x'"; 2_000].join(" OR ")
    );
    let e = refusal(&long);
    assert!(e.contains("bytes; the limit is 16384"), "{e}");
}

#[test]
fn a_sql_step_holds_its_query_alone() {
    let text = job("SELECT * FROM input", "").replace("  sql:", "  filter: 'true'\n  sql:");
    let e = parse_job(&text, "t").unwrap_err().to_string();
    assert!(
        e.contains("pipeline[0].sql: a SQL step holds only its query"),
        "{e}"
    );
    assert!(e.contains("move filter into the query"), "{e}");
}

#[test]
fn every_compiled_expression_passes_the_checks_of_hand_written_steps() {
    // The compiled steps are validated like any (parse_job did), so a translation that wrote
    // CEL the checker refuses fails here: these queries use every translated form.
    let queries = [
        "SELECT a, MIN(b) AS m, MAX(c) AS x, AVG(d) AS v FROM input WHERE e <> 'x' OR NOT f GROUP BY a HAVING MAX(c) >= 2 AND COUNT(*) < 9",
        "SELECT CONCAT(a, '-', b) AS ab, LENGTH(c) AS n, TRIM(d) AS t, -e AS neg, g % 2 AS odd, h / 2.5 AS half, CAST(i AS INT) AS ii, CAST(j AS VARCHAR) AS jj FROM input WHERE k NOT BETWEEN 1 AND 2 AND l NOT IN ('x') AND m NOT LIKE '%.png' AND n ILIKE 'A%' AND o IS TRUE",
        "SELECT CASE status WHEN 200 THEN 'ok' WHEN 404 THEN 'missing' END AS s, a.b.c AS deep, _key AS k, _value AS v, _topic AS t, _offset AS o, _timestamp AS ts FROM input",
    ];
    for q in queries {
        let s = steps(q);
        assert!(!s.is_empty(), "{q}");
    }
}

#[test]
fn a_join_with_a_table_is_a_join_step_and_its_columns_are_the_row() {
    let s = steps(
        "SELECT v.page, u.plan FROM input AS v LEFT JOIN users AS u ON v.user = u._key WHERE u.plan <> 'free'",
    );
    let ids: Vec<&str> = s.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["q-join", "q-where", "q-select"]);
    let j = s[0].join.as_ref().unwrap();
    assert_eq!(j.table.topic.as_deref(), Some("users"));
    assert_eq!(j.on.as_deref(), Some("value.user"));
    assert_eq!(j.kind, crate::spec::JoinKind::Left);
    assert_eq!(
        s[1].filter.as_deref(),
        Some("((table == null ? null : table.plan) != \"free\")")
    );
    assert_eq!(
        s[2].select.clone().unwrap(),
        fields(&[
            ("page", "value.page"),
            ("plan", "(table == null ? null : table.plan)")
        ])
    );
    // Grouped by a table column: the key is the row's column, before the shuffle.
    let s = steps("SELECT u.plan, COUNT(*) AS n FROM input JOIN users u ON input.user = u._key GROUP BY u.plan");
    let ids: Vec<&str> = s.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["q-join", "q-key", "q", "q-select"]);
    assert_eq!(
        s[0].join.as_ref().unwrap().kind,
        crate::spec::JoinKind::Inner
    );
    assert_eq!(s[1].key_by.as_deref(), Some("table.plan"));
    assert_eq!(
        s[3].select.clone().unwrap(),
        fields(&[("n", "value"), ("plan", "key")])
    );
    // An aggregate of a table column: its input is computed beside the join, and the
    // aggregate (after the shuffle, where the row is not) adds up the value.
    let s = steps("SELECT page, SUM(u.seats) AS seats FROM input JOIN users u ON input.user = u._key GROUP BY page");
    let ids: Vec<&str> = s.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["q-join", "q-key", "q-fields", "q", "q-select"]);
    assert_eq!(s[2].map.as_deref(), Some("table.seats"));
    assert_eq!(
        s[3].aggregate.as_ref().and_then(|a| a.sum.as_deref()),
        Some("value")
    );
}
