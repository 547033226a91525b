//! The benchmark works end to end at N = 100 (a smoke check, not a timed test: no
//! threshold depends on how fast this machine is).

mod common;

#[test]
fn bench_reports_every_figure_at_100_streams() {
    let out = common::run(&[
        "bench",
        "--streams",
        "100",
        "--clusters",
        "10",
        "--sotw-share",
        "0.2",
        "--rounds",
        "3",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap();
    let r: serde_json::Value = serde_json::from_str(last).unwrap();
    for key in [
        "streams",
        "clusters",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "cpu_s",
        "rss_per_stream_kib",
        "floor_p99_ms",
        "floor_cpu_s",
        "ratio_to_floor",
        "heap_per_stream_kib",
        "rss_after_disconnect_ratio",
        "rss_kept_kib",
        "allocator_metadata_kept_kib",
        "heap_retained_kib",
        "compile_ms",
        "recompile_ms",
    ] {
        assert!(r.get(key).is_some(), "{key} missing in {last}");
    }
    assert_eq!(r["streams"], 100);
    assert_eq!(r["clusters"], 10);
    let (p50, p99, max) = (
        r["p50_ms"].as_f64().unwrap(),
        r["p99_ms"].as_f64().unwrap(),
        r["max_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{last}");
    assert!(r["floor_p99_ms"].as_f64().unwrap() > 0.0);
    // A number (NaN, from rounds that did not pair up, would be null).
    assert!(
        r["floor_cpu_s"].as_f64().is_some_and(|s| s >= 0.0),
        "{last}"
    );
    assert!(r["compile_ms"].as_f64().unwrap() > 0.0, "{last}");
    assert!(r["recompile_ms"].as_f64().unwrap() > 0.0, "{last}");
    // Streams hold memory while connected; the figure is measured, not assumed.
    assert!(r["heap_per_stream_kib"].as_f64().unwrap() > 0.0, "{last}");
    // The heap profile by size class accounts for that heap: its bytes per stream add up to
    // about the live heap per stream (the rest is smaller classes below the report's cut).
    let classes = r["heap_classes_per_stream"]
        .as_array()
        .expect("size classes");
    let profiled_kib: f64 = classes
        .iter()
        .map(|c| c[0].as_f64().unwrap() * c[1].as_f64().unwrap() / 1024.0)
        .sum();
    let heap_kib = r["heap_per_stream_kib"].as_f64().unwrap();
    // jemalloc reports its metadata (a number, not NaN: the statistics are compiled in).
    assert!(
        r["allocator_metadata_kept_kib"].as_f64().is_some(),
        "{last}"
    );
    assert!(
        profiled_kib > heap_kib * 0.5 && profiled_kib < heap_kib * 1.5,
        "size classes {profiled_kib:.1} KiB per stream against a live heap of {heap_kib:.1} KiB: {last}"
    );
    // Three changes were measured on the server and three on the floor; the figures are the
    // medians.
    let median = |key: &str| {
        let mut v: Vec<f64> = r[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} missing in {last}"))
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(v.len(), 3, "{key}: {last}");
        v.sort_by(f64::total_cmp);
        v[1]
    };
    assert_eq!(r["rounds"], 3);
    assert_eq!(p99, median("p99_rounds_ms"), "{last}");
    assert_eq!(
        r["floor_p99_ms"].as_f64().unwrap(),
        median("floor_p99_rounds_ms"),
        "{last}"
    );
    assert!(
        stdout.contains("production adds 100 ms"),
        "the default debounce is reported apart"
    );
}

#[test]
fn bench_reconnect_reports_every_figure_of_a_storm_at_100_streams() {
    let out = common::run(&[
        "bench",
        "--reconnect",
        "--streams",
        "100",
        "--clusters",
        "10",
        "--sotw-share",
        "0.2",
        "--rounds",
        "2",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap();
    let r: serde_json::Value = serde_json::from_str(last).unwrap();
    let number = |key: &str| {
        r[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} is not a number in {last}"))
    };
    assert_eq!(r["streams"], 100);
    assert_eq!(r["rounds"], 2);
    assert_eq!(r["resync_all_rounds_ms"].as_array().map(Vec::len), Some(2));
    // Every stream dropped and synced again: the per-stream figures are ordered, and the
    // last stream's time is the storm's.
    let (p50, p99, all) = (
        number("resync_p50_ms"),
        number("resync_p99_ms"),
        number("resync_all_ms"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= all, "{last}");
    assert!(number("floor_resync_all_ms") > 0.0, "{last}");
    // The peak is measured over the storm, from the settled fleet's RSS up.
    let (peak, settled) = (number("storm_peak_rss_kib"), number("rss_settled_kib"));
    assert!(settled > 0.0 && peak >= settled * 0.9, "{last}");
    assert!(number("floor_storm_peak_rss_kib") > 0.0, "{last}");
    // Without authentication nothing refuses a stream.
    assert_eq!(r["refused"], 0, "{last}");
    assert!(stdout.contains("drop to all synced again"), "{stdout}");
}
