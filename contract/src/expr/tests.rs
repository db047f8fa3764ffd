use std::borrow::Cow;
use std::collections::HashMap;

use super::*;
use crate::value;

struct Rec(HashMap<Var, Val>);

impl Vars for Rec {
    fn var(&self, v: Var) -> Option<Cow<'_, Val>> {
        self.0.get(&v).map(Cow::Borrowed)
    }
}

fn rec(json: &str) -> Rec {
    let mut m = HashMap::new();
    m.insert(Var::Value, Val::from_json(json.as_bytes(), 64).unwrap());
    m.insert(Var::Key, Val::str("k1"));
    m.insert(Var::Partition, Val::Int(3));
    Rec(m)
}

const REC: &[Var] = &[Var::Key, Var::Value, Var::Partition, Var::Offset];

fn eval(src: &str, json: &str) -> Result<Val, EvalError> {
    let p = Program::compile(src, REC).unwrap();
    p.eval(&rec(json)).map(Cow::into_owned)
}

#[test]
fn common_forms_compile_to_closures_and_agree_with_the_interpreter() {
    let json = r#"{"page":"/home","n":7,"tags":["a","b"],"user":{"id":42},"price":2.5}"#;
    let cases = [
        ("has(value.page) && value.page != ''", Val::Bool(true)),
        ("value.n * 2 + 1", Val::Int(15)),
        ("value.n > 5 ? 'big' : 'small'", Val::str("big")),
        ("value.user.id == 42u", Val::Bool(true)),
        (
            "size(value.tags) == 2 && 'a' in value.tags",
            Val::Bool(true),
        ),
        (
            "value.page.startsWith('/h') && !value.page.contains('x')",
            Val::Bool(true),
        ),
        (
            "'a b c'.split(' ')",
            Val::List(std::sync::Arc::new(vec![
                Val::str("a"),
                Val::str("b"),
                Val::str("c"),
            ])),
        ),
        ("value.price * 2", Val::Float(5.0)),
        ("key + '-' + string(partition)", Val::str("k1-3")),
        ("value.tags[1]", Val::str("b")),
        ("value['page'].upperAscii()", Val::str("/HOME")),
        ("{'p': value.page, 'n': value.n}.n", Val::Int(7)),
        ("value.page.replace('o', '0')", Val::str("/h0me")),
        ("'aaa'.replace('a', 'bb', 2)", Val::str("bbbba")),
        ("'ab'.replace('', '-')", Val::str("-a-b-")),
        ("value.tags.join('+')", Val::str("a+b")),
        ("value.tags.join()", Val::str("ab")),
        ("'héllo hé'.indexOf('é')", Val::Int(1)),
        ("'héllo hé'.indexOf('é', 2)", Val::Int(7)),
        ("'héllo hé'.lastIndexOf('é')", Val::Int(7)),
        ("'héllo hé'.lastIndexOf('é', 6)", Val::Int(1)),
        ("'héllo'.indexOf('x')", Val::Int(-1)),
        ("'héllo'.indexOf('')", Val::Int(0)),
        ("'héllo'.lastIndexOf('')", Val::Int(5)),
    ];
    for (src, want) in cases {
        let p = Program::compile(src, REC).unwrap();
        assert_eq!(
            p.interpreted_subtrees(),
            0,
            "{src} should not need the interpreter"
        );
        let got = p.eval(&rec(json)).unwrap().into_owned();
        assert_eq!(got, want, "{src}");
        // The same expression through the cel interpreter gives the same answer.
        let mut ctx = cel::Context::with_env(env());
        ctx.add_variable_from_value(
            "value",
            value::to_cel(&Val::from_json(json.as_bytes(), 64).unwrap()),
        );
        ctx.add_variable_from_value("key", "k1");
        ctx.add_variable_from_value("partition", 3i64);
        let interp = cel::Program::compile(src).unwrap().execute(&ctx);
        if let Ok(v) = interp {
            assert_eq!(
                value::from_cel(&v).unwrap(),
                want,
                "interpreter disagrees on {src}"
            );
        }
    }
}

#[test]
fn macros_fall_back_to_the_interpreter() {
    let p = Program::compile("value.tags.exists(t, t == 'b')", REC).unwrap();
    assert_eq!(p.interpreted_subtrees(), 1);
    assert_eq!(
        p.eval(&rec(r#"{"tags":["a","b"]}"#)).unwrap().into_owned(),
        Val::Bool(true)
    );
    let p = Program::compile("value.tags.map(t, t + '!')", REC).unwrap();
    assert_eq!(
        p.eval(&rec(r#"{"tags":["a"]}"#)).unwrap().into_owned(),
        Val::List(std::sync::Arc::new(vec![Val::str("a!")]))
    );
}

#[test]
fn runtime_errors_are_errors_not_panics() {
    assert!(eval("value.missing == 1", "{}")
        .unwrap_err()
        .0
        .contains("no such key"));
    assert!(eval("value.n / 0", r#"{"n":1}"#)
        .unwrap_err()
        .0
        .contains("division by zero"));
    assert!(eval("value.n + 1", r#"{"n":9223372036854775807}"#)
        .unwrap_err()
        .0
        .contains("overflow"));
    assert!(eval("value.s + 1", r#"{"s":"x"}"#).is_err());
    assert!(eval("value.tags[5]", r#"{"tags":[]}"#)
        .unwrap_err()
        .0
        .contains("out of range"));
    // A decisive operand wins over an error on the other side, as CEL specifies.
    assert_eq!(
        eval("value.missing == 1 || true", "{}").unwrap(),
        Val::Bool(true)
    );
    assert_eq!(
        eval("false && value.missing == 1", "{}").unwrap(),
        Val::Bool(false)
    );
}

#[test]
fn load_errors_give_position_and_reason() {
    let e = Program::compile("value.page ==", REC).unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.column > 1, "{e}");
    let e = Program::compile("valu.page == 'x'", REC).unwrap_err();
    assert_eq!((e.line, e.column), (1, 1));
    assert!(e.reason.contains("unknown variable 'valu'"), "{e}");
    assert!(e.reason.contains("value"), "lists what can be used: {e}");
    let e = Program::compile("value.a &&\n  frobnicate(value.b)", REC).unwrap_err();
    assert_eq!((e.line, e.column), (2, 3), "{e}");
    assert!(e.reason.contains("unknown function 'frobnicate'"));
    // Comprehension variables are bound, not unknown.
    assert!(Program::compile("value.xs.all(x, x > 0)", REC).is_ok());
    let deep = "(".repeat(200) + "1" + &")".repeat(200);
    let e = Program::compile(&deep, REC).unwrap_err();
    assert!(e.reason.contains("nested deeper than 64 levels"), "{e}");
    let deep_list = "[".repeat(100) + &"]".repeat(100);
    assert!(Program::compile(&deep_list, REC)
        .unwrap_err()
        .reason
        .contains("nested deeper"));
    assert!(Program::compile(&"1+".repeat(3000), REC)
        .unwrap_err()
        .reason
        .contains("longer than"));
    assert!(Program::compile("  ", REC).is_err());
}

#[test]
fn value_reads_are_found_so_decoding_can_skip_the_rest() {
    let needs = |src: &str| Program::compile(src, REC).unwrap().value_needs().clone();
    let fields =
        |f: &[&str]| ValueNeeds::Fields(f.iter().map(|s| std::sync::Arc::from(*s)).collect());
    assert_eq!(
        needs("has(value.page) && value.page != ''"),
        fields(&["page"])
    );
    assert_eq!(needs("value['user'].id + value.n"), fields(&["n", "user"]));
    assert_eq!(needs("key == 'x'"), ValueNeeds::Nothing);
    assert_eq!(needs("size(value) > 2"), ValueNeeds::Whole);
    assert_eq!(needs("value[key] == 1"), ValueNeeds::Whole);
    assert_eq!(
        needs("value.tags.exists(t, t == value.page)"),
        fields(&["page", "tags"])
    );
    assert!(Program::compile("key + value.x", REC)
        .unwrap()
        .uses(Var::Key));
    assert!(!Program::compile("value.x", REC).unwrap().uses(Var::Key));
}

#[test]
fn a_loop_over_record_data_inside_another_is_refused_at_load() {
    // Each is one pass over the record, or a pass over parts of the outer element.
    for ok in [
        "value.items.exists(i, i.price > 10)",
        "value.items.all(i, i.tags.exists(t, t == 'x'))",
        "value.items.map(i, i['tags'].filter(t, t != '')).size() > 0",
        "[1, 2, 3].exists(n, value.items.exists(i, i == n))",
    ] {
        assert!(Program::compile(ok, REC).is_ok(), "{ok}");
    }
    // Quadratic in the record: a 4 MiB list would take 10^12 iterations.
    let e = Program::compile("value.a.exists(x, value.a.exists(y, x == y))", REC).unwrap_err();
    assert!(e.reason.contains("more than the limit"), "{e}");
    assert!(e.reason.contains("loop over the outer element"), "{e}");
    let e = Program::compile(
        "value.s.split('').map(c, value.s.split('').filter(d, d == c))",
        REC,
    )
    .unwrap_err();
    assert!(e.reason.contains("steps per record"), "{e}");

    // Scanning record data from outside the element on every iteration is quadratic too.
    for bad in [
        "value.a.all(x, !(9 in value.a))",
        "value.a.exists(x, size(value.s) > x)",
        "value.a.filter(x, value.s.contains(x)).size() > 0",
        "value.a.exists(x, value.b == value.c)",
    ] {
        let e = Program::compile(bad, REC).unwrap_err();
        assert!(e.reason.contains("a scan of record data"), "{bad}: {e}");
    }
    for ok in [
        "value.a.exists(x, x in ['a', 'b'])",
        "value.items.exists(i, i.tag == value.page)",
        "value.items.exists(i, size(i.tags) > 2 && i.name.contains('x'))",
        "['a', 'b'].exists(t, t in value.tags)",
        "value.items.map(i, i.price + value.shipping)",
    ] {
        assert!(Program::compile(ok, REC).is_ok(), "{ok}");
    }
}

#[test]
fn concatenation_cannot_grow_a_value_past_the_record_limit() {
    let half = "x".repeat(MAX_VALUE_BYTES / 2 + 1);
    let json = format!(r#"{{"s":"{half}","l":[1]}}"#);
    let e = eval("value.s + value.s", &json).unwrap_err();
    assert!(e.0.contains("more than the limit"), "{e}");
    // Below the limit it is ordinary concatenation.
    assert_eq!(
        eval("size(value.s + 'y')", &json).unwrap(),
        Val::Int(half.len() as i64 + 1)
    );
    assert_eq!(eval("size(value.l + value.l)", &json).unwrap(), Val::Int(2));
}

#[test]
fn string_functions_on_hostile_records_stay_linear_and_bounded() {
    // A naive search would take about 10^12 steps here; a linear one, a few milliseconds.
    let s = "a".repeat(1 << 20);
    let needle = "a".repeat(1 << 19) + "b";
    let json = format!(r#"{{"s":"{s}","n":"{needle}"}}"#);
    assert_eq!(
        eval("value.s.indexOf(value.n)", &json).unwrap(),
        Val::Int(-1)
    );
    assert_eq!(
        eval("value.s.lastIndexOf(value.n)", &json).unwrap(),
        Val::Int(-1)
    );
    // A million matches, each replaced by a million bytes: refused before allocating.
    let e = eval("value.s.replace('a', value.s)", &json).unwrap_err();
    assert!(e.0.contains("more than the limit"), "{e}");
    let e = eval("value.s.split('').join(value.s)", &json).unwrap_err();
    assert!(e.0.contains("more than the limit"), "{e}");
    assert!(eval("value.t.indexOf('b', 9)", r#"{"t":"abc"}"#)
        .unwrap_err()
        .0
        .contains("index out of range: 9"));
}

#[test]
fn functions_the_interpreter_runs_slowly_are_refused_inside_loops() {
    for bad in [
        "value.items.exists(i, i.name.indexOf(i.pat) >= 0)",
        "value.items.map(i, value.s.replace('a', i))",
        "value.items.all(i, i.tags.join(',') != '')",
        "value.items.exists(i, i.name.matches(value.pattern))",
        "value.items.exists(i, i.name.lastIndexOf('x') > 0)",
    ] {
        let e = Program::compile(bad, REC).unwrap_err();
        assert!(e.reason.contains("inside a loop"), "{bad}: {e}");
        assert!(e.reason.contains("outside the loop"), "{bad}: {e}");
    }
    for ok in [
        "value.items.exists(i, i.name.matches('^a+$'))",
        "value.s.indexOf('x') > 0 && value.items.exists(i, i.contains('x'))",
        "value.items.map(i, i.name).join(',')",
    ] {
        assert!(Program::compile(ok, REC).is_ok(), "{ok}");
    }
}

#[test]
fn a_float_division_by_zero_is_a_record_error_not_the_string_inf() {
    for src in ["value.price / 0.0", "value.price / 0", "value.n / 0.0"] {
        let e = eval(src, r#"{"price":2.5,"n":1}"#).unwrap_err().0;
        assert!(e.contains("division by zero"), "{src}: {e}");
    }
    let e = eval("value.big * value.big", r#"{"big":1e300}"#)
        .unwrap_err()
        .0;
    assert!(e.contains("overflows a double"), "{e}");
    assert_eq!(
        eval("value.price / 2", r#"{"price":2.5}"#),
        Ok(Val::Float(1.25))
    );
}

#[test]
fn calls_on_constants_that_always_fail_are_refused_at_load() {
    for (src, why) in [
        ("1 + \"a\"", "no operator + for int and string"),
        ("value.n + (1 / 0)", "division by zero"),
        ("value.n + 1.0 / 0.0", "division by zero"),
    ] {
        let e = check(src, &["value"]).unwrap_err().to_string();
        assert!(e.contains("fails on every record"), "{src}: {e}");
        assert!(e.contains(why), "{src}: {e}");
    }
    // Constants that work, and failures that depend on the record, stay allowed.
    check("value.n / 2 + 1", &["value"]).unwrap();
    check("value.n / 0", &["value"]).unwrap();
    check("[1, 2].map(x, x / 1)", &[]).unwrap();
}

#[test]
fn timestamps_and_durations_evaluate_and_a_stored_timestamp_is_rfc_3339_text() {
    let json = r#"{"ts":"2026-11-01T12:00:00+01:00"}"#;
    assert_eq!(
        eval("timestamp(value.ts)", json).unwrap(),
        Val::str("2026-11-01T12:00:00+01:00")
    );
    assert_eq!(
        eval(
            "timestamp(value.ts) - timestamp('2026-11-01T10:00:00Z') == duration('1h')",
            json
        )
        .unwrap(),
        Val::Bool(true)
    );
    assert_eq!(
        eval("timestamp(value.ts).getHours('UTC')", json).unwrap(),
        Val::Int(11)
    );
}

#[test]
fn times_compare_as_times_not_as_their_texts() {
    // Lexically "12:00+01:00" > "11:30Z", but 11:00 UTC is before 11:30 UTC.
    let json = r#"{"ts":"2026-11-01T12:00:00+01:00"}"#;
    assert_eq!(
        eval(
            "timestamp(value.ts) > timestamp('2026-11-01T11:30:00Z')",
            json
        )
        .unwrap(),
        Val::Bool(false)
    );
    assert_eq!(eval("duration('90s')", json).unwrap(), Val::str("90s"));
}

#[test]
fn every_function_the_checker_allows_runs() {
    // The checker's lists name what a spec may call; each must be one the interpreter (or the
    // compiled closures) can run, or a job passes validation and fails on every record.
    let json = r#"{"s":"Hello","tags":["b","a"],"n":7,"ts":"2026-01-01T10:20:30.400Z"}"#;
    let calls: &[(&str, &str)] = &[
        ("size", "size(value.s) == 5"),
        ("int", "int('7') == 7"),
        ("uint", "uint(7) == 7u"),
        ("double", "double(7) == 7.0"),
        ("string", "string(7) == '7'"),
        ("bytes", "bytes('a') == b'a'"),
        ("bool", "bool('true')"),
        ("type", "type(1) == type(2) && type(1) != type('a')"),
        ("dyn", "dyn(1) == 1"),
        ("contains", "value.s.contains('ell')"),
        ("startsWith", "value.s.startsWith('He')"),
        ("endsWith", "value.s.endsWith('lo')"),
        (
            "matches",
            "value.s.matches('^H.l+o$') && !value.s.matches('^x')",
        ),
        ("split", "value.s.split('l') == ['He', '', 'o']"),
        ("lowerAscii", "value.s.lowerAscii() == 'hello'"),
        ("upperAscii", "value.s.upperAscii() == 'HELLO'"),
        ("trim", "' a '.trim() == 'a'"),
        ("replace", "value.s.replace('l', 'L') == 'HeLLo'"),
        ("join", "value.tags.join('-') == 'b-a'"),
        ("substring", "value.s.substring(1, 3) == 'el'"),
        ("indexOf", "value.s.indexOf('l') == 2"),
        ("lastIndexOf", "value.s.lastIndexOf('l') == 3"),
        ("charAt", "value.s.charAt(1) == 'e'"),
        ("reverse", "value.s.reverse() == 'olleH'"),
        ("has", "has(value.s)"),
        ("all", "value.tags.all(t, size(t) == 1)"),
        ("exists", "value.tags.exists(t, t == 'a')"),
        ("exists_one", "value.tags.exists_one(t, t == 'a')"),
        ("map", "value.tags.map(t, t + t) == ['bb', 'aa']"),
        ("filter", "value.tags.filter(t, t == 'a') == ['a']"),
        ("duration", "duration('90s') == duration('1m30s')"),
        (
            "timestamp",
            "timestamp(value.ts) > timestamp('2025-01-01T00:00:00Z')",
        ),
        ("getFullYear", "timestamp(value.ts).getFullYear() == 2026"),
        ("getMonth", "timestamp(value.ts).getMonth() == 0"),
        ("getDayOfMonth", "timestamp(value.ts).getDayOfMonth() == 0"),
        ("getDayOfWeek", "timestamp(value.ts).getDayOfWeek() == 4"),
        ("getDayOfYear", "timestamp(value.ts).getDayOfYear() == 0"),
        ("getHours", "timestamp(value.ts).getHours() == 10"),
        ("getMinutes", "timestamp(value.ts).getMinutes() == 20"),
        ("getSeconds", "timestamp(value.ts).getSeconds() == 30"),
        (
            "getMilliseconds",
            "timestamp(value.ts).getMilliseconds() == 400",
        ),
    ];
    let named: std::collections::BTreeSet<&str> = calls.iter().map(|(f, _)| *f).collect();
    let allowed: std::collections::BTreeSet<&str> =
        FUNCTIONS.iter().chain(TIME_FUNCTIONS).copied().collect();
    assert_eq!(named, allowed, "a call for every allowed function");
    for (f, src) in calls {
        assert_eq!(eval(src, json), Ok(Val::Bool(true)), "{f}: {src}");
    }
}
