//! The job page (`GET /`) in a real browser: headless Chromium loads it from a running embedded
//! job, its script draws `/progress`, and the DOM it leaves is checked against `/progress`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Runs headless Chromium on `url` with `args`, giving the page's script 6 s of virtual time
/// (its first poll of `progress`, then two more). Returns stdout.
fn headless(bin: &Path, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let child = Command::new(bin)
        .args(["--headless", "--disable-gpu", "--no-sandbox"])
        .args(["--disable-dev-shm-usage", "--virtual-time-budget=6000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(Duration::from_secs(90)) else {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        panic!("chromium did not finish within 90 s");
    };
    let out = out.expect("chromium output");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of attribute `name` in the start tag at the beginning of `tag`.
fn attr(tag: &str, name: &str) -> Option<String> {
    let head = &tag[..tag.find('>')?];
    let at = head.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = head[at..].find('"')?;
    Some(head[at..at + len].to_string())
}

/// Each start tag `<open...` in `html`, with the text after it.
fn tags<'a>(html: &'a str, open: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    html.match_indices(open).map(|(i, _)| &html[i..])
}

/// Checks one stage's section of the page against the same stage in `/progress` (`later`,
/// read after the page): a point per batch on every timeline, and the partition table equal to
/// the ranges of the batch it was drawn from. Returns the number of points.
fn check_stage(section: &str, name: &str, later: &Value) -> usize {
    let table = tags(section, "<table class=\"partitions\"")
        .next()
        .unwrap_or_else(|| panic!("stage {name}: no partition table"));
    let table = &table[..table.find("</table>").expect("</table>")];
    let drawn: u64 = attr(table, "data-batch")
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("stage {name}: the table names no batch"));
    // The page read /progress before this test did: the batches it drew are the later ones up to
    // the latest it saw (fewer than its 60 and /progress's 100, so none dropped out).
    let batches: Vec<&Value> = later["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .filter(|b| b["batch"].as_u64().expect("batch") <= drawn)
        .collect();
    let expected = batches.len();
    assert_eq!(
        attr(section, "data-batches").as_deref(),
        Some(expected.to_string().as_str()),
        "stage {name}: batches drawn"
    );
    let svgs: Vec<&str> = tags(section, "<svg").collect();
    assert_eq!(svgs.len(), 5, "stage {name}: five timelines");
    for svg in svgs {
        let series = attr(svg, "data-series").expect("data-series");
        let body = &svg[..svg.find("</svg>").expect("</svg>")];
        assert_eq!(
            attr(svg, "data-points"),
            Some(expected.to_string()),
            "stage {name}, {series}: data-points"
        );
        assert_eq!(
            body.matches("<circle").count(),
            expected,
            "stage {name}, {series}: one point per batch"
        );
    }
    let latest = batches.last().expect("a batch");
    assert_eq!(latest["batch"].as_u64(), Some(drawn));
    let ranges = latest["ranges"].as_array().expect("ranges");
    let rows: Vec<&str> = tags(table, "<tr data-topic=").collect();
    assert_eq!(
        attr(table, "data-rows"),
        Some(ranges.len().to_string()),
        "stage {name}: rows"
    );
    assert_eq!(rows.len(), ranges.len(), "stage {name}: partition rows");
    assert!(
        !ranges.is_empty(),
        "stage {name}: no partitions in {latest}"
    );
    for (row, r) in rows.iter().zip(ranges) {
        let want = |k: &str| match &r[k] {
            Value::String(s) => s.clone(),
            Value::Null => "null".to_string(),
            v => v.to_string(),
        };
        for (a, k) in [
            ("data-topic", "topic"),
            ("data-partition", "partition"),
            ("data-from", "from"),
            ("data-until", "until"),
            ("data-lag", "lag"),
        ] {
            assert_eq!(
                attr(row, a),
                Some(want(k)),
                "stage {name}, batch {drawn}: {a} of {r}"
            );
        }
    }
    expected
}

#[test]
fn the_job_page_draws_each_batch_and_the_partitions_in_headless_chromium() {
    let Some(bin) = weir_testkit::tools::chromium() else {
        return;
    };
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/word-count.yaml");
    let w = WorkerProc::spawn(&example, &["--embedded", "--max-batches", "1000"]);
    let addr = w
        .http
        .clone()
        .expect("the worker's address from its start line");
    let url = format!("http://{addr}/");

    // The start line links the page, and the quick start prints it.
    let start = w
        .wait_log("worker starting", Duration::from_secs(5))
        .expect("start line");
    let start: Value = serde_json::from_str(&start).expect("JSON log line");
    assert_eq!(start["fields"]["page"].as_str(), Some(url.as_str()));
    assert!(
        w.wait_log(&format!("job page: {url}"), Duration::from_secs(5))
            .is_some(),
        "the embedded run prints the page's URL:\n{}",
        w.all_logs()
    );
    let (status, html) = w.get("/").expect("GET /");
    assert_eq!(status, 200);
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "the page loads nothing from elsewhere"
    );

    eventually(
        "three batches in each stage",
        Duration::from_secs(60),
        || {
            w.progress().is_some_and(|p| {
                p["batches"].as_array().map_or(0, Vec::len) >= 3
                    && p["stages"][0]["batches"].as_array().map_or(0, Vec::len) >= 3
            })
        },
    );

    let dom = headless(&bin, &url, &["--dump-dom"]);
    let later = w.progress().expect("/progress");
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the script did not draw:\n{dom}"
    );
    assert!(dom.contains("data-stages=\"2\""), "two stages:\n{dom}");
    let sections: Vec<&str> = tags(&dom, "<section class=\"stage\"").collect();
    assert_eq!(sections.len(), 2, "{dom}");
    // Each section up to the next, so a stage's checks see only its own tags.
    let input = &sections[0][..sections[0].len() - sections[1].len()];
    assert_eq!(attr(input, "data-stage").as_deref(), Some("input"));
    let points = check_stage(input, "input", &later);
    assert!(points >= 3, "{points} batches drawn");
    let counts = sections[1];
    let stage = later["stages"][0].clone();
    assert_eq!(
        attr(counts, "data-stage"),
        stage["stage"].as_str().map(str::to_string)
    );
    check_stage(counts, "counts", &stage);
    assert_eq!(
        dom.matches("class=\"dead-letters\"").count(),
        2,
        "dead letters per stage"
    );

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("job-page.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &bin,
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2400",
            "--hide-scrollbars",
        ],
    );
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a PNG");
    eprintln!("job page screenshot: {}", shot.display());
}

#[test]
fn the_job_page_says_what_the_worker_waits_on_before_its_first_batch() {
    let Some(bin) = weir_testkit::tools::chromium() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_held, refused) = refused_address();
    let job = job_file(dir.path(), &format!("batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: '{refused}', topics: [in]}}}}\nsink: {{stdout: {{}}}}\n"));
    let w = WorkerProc::spawn(&job, &[]);
    let addr = w
        .http
        .clone()
        .expect("the worker's address from its start line");
    eventually("retrying in /progress", Duration::from_secs(30), || {
        w.progress().is_some_and(|p| p["retrying"].is_object())
    });
    let dom = headless(&bin, &format!("http://{addr}/"), &["--dump-dom"]);
    let later = w.progress().expect("/progress");
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the script did not draw:\n{dom}"
    );
    let banner = tags(&dom, "<div class=\"alert retrying\"")
        .next()
        .unwrap_or_else(|| panic!("no retrying banner:\n{dom}"));
    // The wait began before the page looked, and goes on: the same since.
    assert_eq!(
        attr(banner, "data-since-ms"),
        later["retrying"]["sinceMs"].as_i64().map(|m| m.to_string()),
        "{banner}"
    );
    assert!(dom.contains("data-stages=\"1\""), "one stage:\n{dom}");
    let input = tags(&dom, "<section class=\"stage\"")
        .next()
        .expect("the stage");
    assert_eq!(attr(input, "data-batches").as_deref(), Some("0"));
    assert_eq!(input.matches("data-points=\"0\"").count(), 5, "{input}");
    let table = tags(input, "<table class=\"partitions\"")
        .next()
        .expect("the partition table");
    assert_eq!(attr(table, "data-rows").as_deref(), Some("0"));
}
