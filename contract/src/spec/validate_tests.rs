use crate::spec::parse_job;

/// The validation errors of a job with these pipeline steps, as "field: message" lines.
fn errors(steps: &str) -> String {
    refusal(&format!(
        "batchInterval: 5s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [in]}}}}\npipeline:\n{steps}sink: {{stdout: {{}}}}\n"
    ))
}

/// Why a job file is refused; empty when it loads.
fn refusal(yaml: &str) -> String {
    match parse_job(yaml, "t") {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_repartition_needs_a_key_by_since_the_last_shuffle() {
    let e = errors("- {id: shuffle, repartition: {}}\n");
    assert!(
        e.contains("pipeline[0].repartition") && e.contains("keyBy"),
        "{e}"
    );
    let ok = errors("- {id: k, keyBy: value}\n- {id: shuffle, repartition: {}}\n");
    assert_eq!(ok, "");
    // A second shuffle needs a keyBy of its own.
    let e = errors(
        "- {id: k, keyBy: value}\n- {id: s1, repartition: {}}\n- {id: s2, repartition: {}}\n",
    );
    assert!(e.contains("pipeline[2].repartition"), "{e}");
    assert!(!e.contains("pipeline[1]"), "{e}");
}

#[test]
fn windows_off_the_batch_interval_name_the_numbers_and_the_fix() {
    let e = errors("- {id: w, aggregate: {count: {}}, window: {length: 12s}}\n");
    assert!(
        e.contains("pipeline[0].window.length") && e.contains("5s"),
        "{e}"
    );
}

#[test]
fn reset_state_may_name_a_step_the_pipeline_no_longer_has() {
    let yaml = "batchInterval: 5s\nsource: {kafka: {bootstrapServers: 'k:9092', topics: [in]}}\nsink: {stdout: {}}\ncheckpoint: {resetState: [gone]}\n";
    assert!(parse_job(yaml, "t").is_ok());
}

#[test]
fn per_partition_applies_only_to_steps_that_group_by_key() {
    let e = errors("- {id: f, filter: 'true', perPartition: true}\n");
    assert!(
        e.contains("pipeline[0].perPartition") && e.contains("aggregate or state"),
        "{e}"
    );
    let ok =
        errors("- {id: k, keyBy: value}\n- {id: n, perPartition: true, aggregate: {count: {}}}\n");
    assert_eq!(ok, "");
}

#[test]
fn the_retry_bound_is_every_attempt_and_every_wait_between_them() {
    use std::time::Duration;
    let spec = crate::spec::RetrySpec {
        max_retries: 4,
        backoff: "1s".parse().expect("duration"),
    };
    let waits: Vec<Duration> = spec.waits().collect();
    assert_eq!(waits, [1, 2, 4, 8].map(Duration::from_secs));
    // Five attempts of 10 s and 15 s of waits.
    assert_eq!(
        spec.give_up_within(Duration::from_secs(10)),
        Duration::from_secs(65)
    );
    // The doubling stops at 30 times the first wait.
    let long = crate::spec::RetrySpec {
        max_retries: 8,
        backoff: "100ms".parse().expect("duration"),
    };
    let last = long.waits().last().expect("a wait");
    assert_eq!(last, Duration::from_secs(3));
}

#[test]
fn combine_applies_to_aggregates_whose_partials_merge_to_the_same_result() {
    let e = errors("- {id: f, filter: 'true', combine: false}\n");
    assert!(
        e.contains("pipeline[0].combine") && e.contains("applies to an aggregate step"),
        "{e}"
    );
    let e =
        errors("- {id: k, keyBy: value}\n- {id: r, aggregate: {reduce: 'a + b'}, combine: true}\n");
    assert!(
        e.contains("pipeline[1].combine") && e.contains("associative and commutative"),
        "{e}"
    );
    let e = errors("- {id: k, keyBy: value}\n- {id: s, aggregate: {sum: offset}, combine: true}\n");
    assert!(
        e.contains("pipeline[1].combine") && e.contains("`offset`"),
        "{e}"
    );
    for ok in [
        "- {id: k, keyBy: value}\n- {id: n, aggregate: {count: {}}, combine: false}\n",
        "- {id: k, keyBy: value}\n- {id: n, aggregate: {sum: value}, combine: true}\n",
        "- {id: k, keyBy: value}\n- {id: r, aggregate: {reduce: 'a + b'}, combine: false}\n",
    ] {
        assert_eq!(errors(ok), "", "{ok}");
    }
}

/// The validation errors of a job with a watermark (when `watermark` is set), event time
/// `value.ts` and these steps.
fn event_errors(watermark: &str, steps: &str) -> String {
    refusal(&format!(
        "batchInterval: 5s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [in]}}, eventTime: value.ts{watermark}}}\npipeline:\n{steps}sink: {{stdout: {{}}}}\n"
    ))
}

const WATERMARK: &str = ", watermark: {delay: 10s}";

#[test]
fn an_event_time_window_needs_a_watermark_and_says_how_to_add_one() {
    let step = "- {id: w, aggregate: {count: {}}, window: {time: event, length: 1m}}\n";
    let e = event_errors("", step);
    assert!(
        e.contains("pipeline[0].window.time") && e.contains("source.watermark: {delay: 10s}"),
        "{e}"
    );
    assert_eq!(event_errors(WATERMARK, step), "");
    // Event-time lengths need not be multiples of the batch interval.
    let odd = "- {id: w, aggregate: {count: {}}, window: {time: event, length: 7s}}\n";
    assert_eq!(event_errors(WATERMARK, odd), "");
}

#[test]
fn event_time_windows_refuse_shapes_that_make_no_sense_naming_the_field() {
    for (window, field, words) in [
        (
            "{time: event}",
            "pipeline[0].window",
            "neither length nor gap",
        ),
        (
            "{time: event, length: 1m, gap: 5m}",
            "pipeline[0].window",
            "both length and gap",
        ),
        (
            "{time: event, length: 1m, slide: 2m}",
            "pipeline[0].window.slide",
            "longer than",
        ),
        (
            "{time: event, length: 1m, slide: 7s}",
            "pipeline[0].window.length",
            "multiple of slide",
        ),
        (
            "{time: event, length: 10m, slide: 1s}",
            "pipeline[0].window.slide",
            "600 windows",
        ),
        (
            "{time: event, gap: 0s}",
            "pipeline[0].window.gap",
            "longer than 0s",
        ),
        (
            "{time: event, gap: 1m, slide: 10s}",
            "pipeline[0].window.slide",
            "session",
        ),
        (
            "{time: event, length: 1m, late: deadLetter}",
            "pipeline[0].window.late",
            "deadLetter topic",
        ),
        (
            "{length: 10s, gap: 1m}",
            "pipeline[0].window.gap",
            "time: event",
        ),
        (
            "{length: 10s, allowedLateness: 1m}",
            "pipeline[0].window.allowedLateness",
            "time: event",
        ),
        ("{gap: 1m}", "pipeline[0].window.length", "is missing"),
    ] {
        let step = format!("- {{id: w, aggregate: {{count: {{}}}}, window: {window}}}\n");
        let e = event_errors(WATERMARK, &step);
        assert!(e.contains(field) && e.contains(words), "{window}: {e}");
    }
}

#[test]
fn one_event_time_window_per_job_and_before_any_other_barrier() {
    let w = "window: {time: event, length: 1m}, aggregate: {count: {}}";
    let e = event_errors(WATERMARK, &format!("- {{id: a, {w}}}\n- {{id: b, {w}}}\n"));
    assert!(
        e.contains("pipeline[1].window.time") && e.contains("at most one"),
        "{e}"
    );
    let e = event_errors(
        WATERMARK,
        &format!("- {{id: s, aggregate: {{count: {{}}}}}}\n- {{id: b, {w}}}\n"),
    );
    assert!(
        e.contains("pipeline[1].window.time") && e.contains("before any aggregate"),
        "{e}"
    );
}

#[test]
fn an_event_time_expression_and_idle_after_are_checked_at_load() {
    let e = event_errors(WATERMARK, "").replace("eventTime: value.ts", "");
    assert_eq!(e, "");
    let yaml = "batchInterval: 5s\nsource: {kafka: {bootstrapServers: 'k:9092', topics: [in]}, eventTime: 'value.ts +', watermark: {delay: 1s, idleAfter: 1s}}\nsink: {stdout: {}}\n";
    let e = parse_job(yaml, "t").unwrap_err().to_string();
    assert!(e.contains("source.eventTime"), "{e}");
    assert!(
        e.contains("source.watermark.idleAfter") && e.contains("shorter than batchInterval"),
        "{e}"
    );
}

#[test]
fn a_join_names_one_table_and_its_row_is_visible_to_the_steps_after_it() {
    let ok = errors(
        "- {id: j, join: {table: {topic: users}, on: value.user, kind: left}}\n- {id: s, select: {name: 'table == null ? \"\" : table.name'}}\n",
    );
    assert_eq!(ok, "");
    let e = errors("- {id: j, join: {table: {topic: users, file: /x}}}\n");
    assert!(
        e.contains("pipeline[0].join.table: sets exactly one of topic"),
        "{e}"
    );
    let e = errors("- {id: j, join: {table: {file: /x, history: 1m}}}\n");
    assert!(
        e.contains("pipeline[0].join.table.history: belongs to a table read from a topic"),
        "{e}"
    );
    let e = errors("- {id: j, join: {table: {configMap: {name: Bad_Name, key: 'a/b'}}}}\n");
    assert!(
        e.contains("configMap.name: \"Bad_Name\" is not a ConfigMap name"),
        "{e}"
    );
    assert!(
        e.contains("configMap.key: \"a/b\" is not a ConfigMap key"),
        "{e}"
    );
    // Before the join, and in a keyed step that may run behind a shuffle, there is no row.
    let e =
        errors("- {id: f, filter: 'table != null'}\n- {id: j, join: {table: {topic: users}}}\n");
    assert!(
        e.contains("pipeline[0].filter") && e.contains("'table'"),
        "{e}"
    );
    let e = errors(
        "- {id: j, join: {table: {topic: users}}}\n- {id: k, keyBy: value.page}\n- {id: a, aggregate: {sum: table.n}}\n",
    );
    assert!(
        e.contains("pipeline[2].aggregate") && e.contains("'table'"),
        "{e}"
    );
    // A partitioned table is a topic's; its join key is read behind a shuffle.
    let ok = errors(
        "- {id: j, join: {table: {topic: users, partitioned: true, partitioner: crc32}, on: value.user}}\n",
    );
    assert_eq!(ok, "");
    let e = errors("- {id: j, join: {table: {file: /x, partitioned: true}}}\n");
    assert!(
        e.contains("pipeline[0].join.table.partitioned: applies to a table read from a topic"),
        "{e}"
    );
    let e = errors("- {id: j, join: {table: {topic: users, partitioner: murmur2}}}\n");
    assert!(
        e.contains("pipeline[0].join.table.partitioner: says how a partitioned table"),
        "{e}"
    );
    let e = errors(
        "- {id: j, join: {table: {topic: users, partitioned: true}, on: 'string(partition)'}}\n",
    );
    assert!(
        e.contains("pipeline[0].join.on") && e.contains("partition"),
        "{e}"
    );
}

#[test]
fn avro_needs_a_schema_or_a_registry_and_a_sink_needs_its_schema() {
    let job = |source: &str, sink: &str| {
        refusal(&format!(
            "batchInterval: 5s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [in]}}{source}}}\nsink: {{kafka: {{topic: out{sink}}}}}\n"
        ))
    };
    assert_eq!(
        job(
            ", format: avro, avro: {registry: {url: 'http://r:8081'}}",
            ""
        ),
        ""
    );
    assert_eq!(
        job(
            ", format: avro, avro: {schema: {configMap: {name: schemas, key: v.avsc}}}",
            ", avro: {schema: {file: /s/out.avsc}}"
        ),
        ""
    );
    let e = job(", format: avro", "");
    assert!(
        e.contains("source.avro: format avro needs the schema"),
        "{e}"
    );
    let e = job(", avro: {registry: {url: 'http://r:8081'}}", "");
    assert!(
        e.contains("source.avro: is set but format is not avro"),
        "{e}"
    );
    let e = job(", format: avro, avro: {registry: {url: 'r:8081'}}", "");
    assert!(
        e.contains("source.avro.registry.url: \"r:8081\" is not an http"),
        "{e}"
    );
    let e = job("", ", avro: {registry: {url: 'http://r:8081'}}");
    assert!(e.contains("sink.kafka.avro.schema: is missing"), "{e}");
    let e = job(
        ", format: avro, avro: {schema: {file: /a, configMap: {name: s, key: k}}}",
        "",
    );
    assert!(
        e.contains("source.avro.schema: sets exactly one of file and configMap"),
        "{e}"
    );
}

#[test]
fn an_interval_join_needs_a_watermark_and_tells_its_sides_apart_by_the_value() {
    let job = |watermark: &str, join: &str| {
        let yaml = format!(
            "batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [a, b]}}{watermark}}}\npipeline:\n- {{id: k, keyBy: value.user}}\n- {{id: j, intervalJoin: {join}}}\nsink: {{stdout: {{}}}}\n"
        );
        refusal(&yaml)
    };
    let wm = ", watermark: {delay: 1s}";
    assert_eq!(
        job(wm, "{left: 'has(value.viewId)', after: 10m, kind: outer}"),
        ""
    );
    let e = job("", "{left: 'has(value.viewId)'}");
    assert!(
        e.contains("pipeline[1].intervalJoin: joins in event time: set source.watermark"),
        "{e}"
    );
    let e = job(wm, "{left: \"topic == 'views'\"}");
    assert!(e.contains("pipeline[1].intervalJoin.left: "), "{e}");
    assert!(e.contains("the repartition record's"), "{e}");
    let e = job(wm, "{left: 'true', late: update}");
    assert!(
        e.contains("intervalJoin.late: update applies to windows"),
        "{e}"
    );
    let e = job(wm, "{left: 'true', late: deadLetter}");
    assert!(e.contains("has no deadLetter topic"), "{e}");
}

#[test]
fn a_route_names_a_topic_that_is_no_input_and_a_condition_of_the_result() {
    let job = |routes: &str| {
        let yaml = format!(
            "batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [in]}}}}\nsink: {{kafka: {{topic: out, routes: [{routes}]}}}}\n"
        );
        refusal(&yaml)
    };
    assert_eq!(job("{when: 'value.n > 1', topic: big}"), "");
    let e = job("{when: 'value.n > 1', topic: in}");
    assert!(
        e.contains("sink.kafka.routes[0].topic: \"in\" is also an input topic"),
        "{e}"
    );
    let e = job("{when: 'offset > 1', topic: big}");
    assert!(e.contains("sink.kafka.routes[0].when"), "{e}");
    let e = job("{when: 'true', topic: 'bad topic'}");
    assert!(e.contains("sink.kafka.routes[0].topic"), "{e}");
}

#[test]
fn protobuf_needs_its_schema_and_a_message_type_with_its_package() {
    let job = |source: &str, sink: &str| {
        refusal(&format!(
            "batchInterval: 5s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [in]}}{source}}}\nsink: {{kafka: {{topic: out{sink}}}}}\n"
        ))
    };
    let p = "protobuf: {schema: {file: /s/v.proto}, message: shop.v1.View}";
    assert_eq!(
        job(&format!(", format: protobuf, {p}"), &format!(", {p}")),
        ""
    );
    let e = job(", format: protobuf", "");
    assert!(
        e.contains("source.protobuf: format protobuf needs the schema"),
        "{e}"
    );
    let e = job(
        ", format: protobuf, protobuf: {schema: {file: /s/v.proto}, message: 'shop..View'}",
        "",
    );
    assert!(
        e.contains("source.protobuf.message: \"shop..View\" is not a message type name"),
        "{e}"
    );
    let e = job("", &format!(", {p}, avro: {{schema: {{file: /a.avsc}}}}"));
    assert!(e.contains("sink.kafka: sets both avro and protobuf"), "{e}");
}

#[test]
fn several_sinks_load_but_only_one_may_be_the_record_of_offsets() {
    let job = |sink: &str| {
        refusal(&format!(
            "batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [in]}}}}\nsink: {{{sink}}}\n"
        ))
    };
    let kafka = |delivery: &str| format!("kafka: {{topic: out, delivery: {delivery}}}");
    let postgres = "postgres: {table: counts}";
    assert_eq!(
        job(&format!(
            "{}, file: {{path: /tmp/o}}, stdout: {{}}",
            kafka("exactlyOnce")
        )),
        ""
    );
    assert_eq!(job(&format!("{}, {postgres}", kafka("atLeastOnce"))), "");
    let e = job(&format!("{}, {postgres}", kafka("exactlyOnce")));
    assert!(
        e.contains("sink.kafka.delivery: exactlyOnce cannot hold beside sink.postgres")
            && e.contains("set delivery: atLeastOnce"),
        "{e}"
    );
    let e = job("");
    assert!(e.contains("sink: set at least one of stdout, kafka"), "{e}");
}

#[test]
fn schemad_keys_need_their_schema_where_nothing_else_says_it() {
    let job = |source: &str, sink: &str| {
        refusal(&format!(
            "batchInterval: 5s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [in]}}{source}}}\nsink: {{kafka: {{topic: out{sink}}}}}\n"
        ))
    };
    let with_registry = ", format: avro, avro: {registry: {url: 'http://r:8081'}, key: {}}";
    assert_eq!(
        job(
            with_registry,
            ", avro: {schema: {file: /v}, key: {schema: {file: /k}}}"
        ),
        ""
    );
    let e = job(", format: avro, avro: {schema: {file: /v}, key: {}}", "");
    assert!(
        e.contains("source.avro.key: sets no schema and there is no registry"),
        "{e}"
    );
    let e = job(with_registry, ", avro: {schema: {file: /v}, key: {}}");
    assert!(e.contains("sink.kafka.avro.key.schema: is missing"), "{e}");
    let e = job(
        with_registry,
        ", avro: {schema: {file: /v}, key: {schema: {file: ''}}}",
    );
    assert!(
        e.contains("sink.kafka.avro.key.schema.file: is empty"),
        "{e}"
    );
    let proto = ", format: protobuf, protobuf: {schema: {file: /p.proto}, message: shop.View, keyMessage: KEY}";
    assert_eq!(job(&proto.replace("KEY", "shop.ViewKey"), ""), "");
    let e = job(&proto.replace("KEY", "'shop view'"), "");
    assert!(
        e.contains("source.protobuf.keyMessage: \"shop view\" is not a message type name"),
        "{e}"
    );
}
